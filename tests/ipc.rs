//! The component's IPC client against the devstack's fake nucleus (itself checked by AWS's
//! Python client in devstack/tests/nucleus_official_client.rs).

use std::time::Duration;

use devstack::nucleus::{FakeNucleus, Personality};
use gg_s3_sync::ipc::model::LifecycleState;
use gg_s3_sync::ipc::{Error, IpcClient};
use serde_json::json;

async fn setup() -> (tempfile::TempDir, FakeNucleus, IpcClient) {
    setup_as(Personality::Classic).await
}

async fn setup_as(personality: Personality) -> (tempfile::TempDir, FakeNucleus, IpcClient) {
    let dir = tempfile::tempdir().unwrap();
    let n = FakeNucleus::start_as(dir.path(), personality)
        .await
        .unwrap();
    n.set_nucleus_config(json!({"iotCredEndpoint": "x.credentials.iot.us-east-1.amazonaws.com"}));
    let token = n.register_component(
        "com.example.Sync",
        json!({"bucket": "b", "nested": {"k": 1}, "accessControl": devstack::nucleus::allow_all_access_control()}),
    );
    let c = IpcClient::connect(n.socket(), &token).await.unwrap();
    (dir, n, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn unary_operations() {
    let (_d, n, c) = setup().await;
    let whole = c.get_configuration(None, &[]).await.unwrap();
    assert_eq!(
        (&whole["bucket"], &whole["nested"]),
        (&json!("b"), &json!({"k": 1}))
    );
    assert!(
        whole.get("accessControl").is_some(),
        "both nuclei return accessControl with the whole configuration"
    );
    assert_eq!(
        c.get_configuration(None, &["bucket"]).await.unwrap(),
        json!({"bucket": "b"})
    );
    assert_eq!(
        c.get_configuration(Some("aws.greengrass.Nucleus"), &["iotCredEndpoint"])
            .await
            .unwrap(),
        json!({"iotCredEndpoint": "x.credentials.iot.us-east-1.amazonaws.com"})
    );
    let e = c.get_configuration(None, &["nope"]).await.unwrap_err();
    assert!(e.is_resource_not_found(), "{e:?}");
    assert_eq!(
        e.to_string(),
        "GetConfiguration failed: ResourceNotFoundError: Key not found"
    );

    c.update_state(LifecycleState::Running).await.unwrap();
    c.publish_to_iot_core("a/b", b"\x00\x01bin").await.unwrap();
    c.publish_to_topic("local/t", json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(n.states("com.example.Sync"), ["RUNNING"]);
    assert_eq!(n.iot_publishes()[0].payload, b"\x00\x01bin");
    assert_eq!(n.local_publishes()[0].message, json!({"x": 1}));
    let e = c.publish_to_topic("local/#", json!({})).await.unwrap_err();
    assert!(
        matches!(e, Error::Operation { ref code, .. } if code == "InvalidArgumentsError"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_keep_stream_ids_in_order() {
    let (_d, n, c) = setup().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let c = c.clone();
        set.spawn(async move { c.publish_to_topic("t", json!({"i": i})).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap()
            .expect("the fake rejects out-of-order stream ids with PROTOCOL_ERROR");
    }
    assert_eq!(n.local_publishes().len(), 200);
    assert!(!c.is_closed());
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_deliver_events_and_unsubscribe_on_drop() {
    let (_d, n, c) = setup().await;
    let mut cfg = c
        .subscribe_to_configuration_update(None, &[])
        .await
        .unwrap();
    n.update_configuration("com.example.Sync", &[], &json!({"bucket": "b2"}));
    let ev = cfg
        .next()
        .await
        .unwrap()
        .unwrap()
        .configuration_update_event
        .unwrap();
    assert_eq!(ev.key_path, ["bucket"]);

    let mut topic = c.subscribe_to_topic("gg-s3-sync/sync-now").await.unwrap();
    n.publish_local("gg-s3-sync/sync-now", json!({"reason": "test"}));
    let m = topic.next().await.unwrap().unwrap();
    assert_eq!(m.json_message.unwrap().message, json!({"reason": "test"}));
    drop(topic);
    assert!(
        n.wait_until(Duration::from_secs(5), |n| !n
            .subscribed_to_topic("com.example.Sync", "gg-s3-sync/sync-now"))
            .await
    );

    let mut updates = c.subscribe_to_component_updates().await.unwrap();
    let nucleus = n.clone();
    let deployment = tokio::spawn(async move {
        nucleus
            .component_update("dep-1", Duration::from_secs(10))
            .await
    });
    let ev = updates.next().await.unwrap().unwrap();
    let pre = ev.pre_update_event.unwrap();
    c.defer_component_update(&pre.deployment_id, Some("busy"), 50)
        .await
        .unwrap();
    let again = updates.next().await.unwrap().unwrap();
    assert!(
        again.pre_update_event.is_some(),
        "re-asked after recheckAfterMs"
    );
    c.defer_component_update("dep-1", None, 0).await.unwrap();
    assert!(
        deployment.await.unwrap(),
        "the update proceeds once acknowledged"
    );
    assert!(updates
        .next()
        .await
        .unwrap()
        .unwrap()
        .post_update_event
        .is_some());
    assert_eq!(
        n.defers()
            .iter()
            .map(|d| d.recheck_after_ms)
            .collect::<Vec<_>>(),
        [50, 0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_token_and_lost_connection() {
    let (_d, n, c) = setup().await;
    let e = IpcClient::connect(n.socket(), "WRONGWRONGWRONG0")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AccessDenied), "{e:?}");
    assert!(e.to_string().contains("SVCUID"));

    let mut sub = c
        .subscribe_to_configuration_update(None, &[])
        .await
        .unwrap();
    n.disconnect_all();
    let reason = tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .expect("closed resolves");
    assert!(reason.contains("closed"), "{reason}");
    assert!(matches!(
        sub.next().await,
        Some(Err(Error::ConnectionLost { .. })) | None
    ));
    assert!(matches!(
        c.update_state(LifecycleState::Running).await,
        Err(Error::ConnectionLost { .. })
    ));

    let e = IpcClient::connect(&n.socket().with_file_name("missing.socket"), "x")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pings_are_answered_and_protocol_errors_fail_pending_calls() {
    let (_d, n, c) = setup().await;
    n.ping_all(b"are you there");
    assert!(
        n.wait_until(Duration::from_secs(5), |n| n.pongs()
            == [b"are you there".to_vec()])
            .await
    );
    assert!(!c.is_closed());

    let mut sub = c
        .subscribe_to_configuration_update(None, &[])
        .await
        .unwrap();
    n.protocol_error_all("stream-id values must be monotonically incrementing");
    let reason = tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .unwrap();
    assert!(
        reason.contains("protocol error: stream-id values"),
        "{reason}"
    );
    match sub.next().await {
        Some(Err(Error::ConnectionLost { reason })) => {
            assert!(reason.contains("protocol error"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// Lite binds a subscription before it answers: an event may come first. The client queues it
/// as the first event instead of taking it for the response.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_before_the_subscription_response_is_the_first_event() {
    let (_d, n, c) = setup_as(Personality::Lite).await;
    n.event_before_next_response("gg-s3-sync/sync-now", json!({"early": true}));
    let mut topic = c
        .subscribe_to_topic("gg-s3-sync/sync-now")
        .await
        .expect("an early event is not a bad response");
    let m = topic.next().await.unwrap().unwrap();
    assert_eq!(m.json_message.unwrap().message, json!({"early": true}));
    assert!(!c.is_closed());
}

/// The classic nucleus takes DeferComponentUpdate only as the answer to an outstanding
/// preUpdateEvent (LifecycleIPCEventStreamAgent.deferComponentUpdate).
#[tokio::test(flavor = "multi_thread")]
async fn classic_refuses_a_deferral_nobody_asked_for() {
    let (_d, _n, c) = setup().await;
    let _updates = c.subscribe_to_component_updates().await.unwrap();
    let e = c
        .defer_component_update("dep-1", None, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Operation { code, message, .. }
            if code == "ServiceError" && message.contains("Time limit to respond to PreComponentUpdateEvent exceeded")),
        "{e:?}"
    );
    assert!(!c.is_closed(), "an error, not a lost connection");
}

/// Lite (v2.6.0): the nucleus's keys only under aws.greengrass.NucleusLite, no component-update
/// operations, a 10,012-byte frame limit that closes the connection, and JSON deliveries that
/// do not fit the subscriber's decode arena are dropped with the subscription.
#[tokio::test(flavor = "multi_thread")]
async fn lite_personality_behaves_like_nucleus_lite() {
    let (_d, n, c) = setup_as(Personality::Lite).await;
    let e = c
        .get_configuration(Some("aws.greengrass.Nucleus"), &["iotCredEndpoint"])
        .await
        .unwrap_err();
    assert!(e.is_resource_not_found(), "{e:?}");
    assert_eq!(
        c.get_configuration(Some("aws.greengrass.NucleusLite"), &["iotCredEndpoint"])
            .await
            .unwrap(),
        json!({"iotCredEndpoint": "x.credentials.iot.us-east-1.amazonaws.com"})
    );
    assert!(matches!(
        c.subscribe_to_component_updates().await,
        Err(Error::Operation { ref code, .. }) if code == "ServiceError"
    ));

    // Deliveries: 22 keys fit lite's arena, 24 do not (measured on lite); binary always fits.
    let flat =
        |k: usize| serde_json::Value::Object((0..k).map(|i| (format!("k{i}"), json!(i))).collect());
    let mut sub = c.subscribe_to_topic("t").await.unwrap();
    c.publish_to_topic("t", flat(22)).await.unwrap();
    assert!(sub.next().await.unwrap().unwrap().json_message.is_some());
    c.publish_binary_to_topic("t", br#"{"big":true}"#)
        .await
        .unwrap();
    let b = sub.next().await.unwrap().unwrap();
    assert!(b.binary_message.is_some());
    c.publish_to_topic("t", flat(24)).await.unwrap();
    assert!(
        n.wait_until(Duration::from_secs(5), |n| !n
            .subscribed_to_topic("com.example.Sync", "t"))
            .await,
        "the subscription is dropped without a word"
    );

    // One frame over 10,012 bytes: the connection is closed.
    let _ = c.publish_to_iot_core("a/b", &vec![b'x'; 8_000]).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), c.closed())
        .await
        .expect("closed");
    assert!(!reason.is_empty());
    assert_eq!(n.connections_closed_for_size(), 1);
}

/// The component subscribes with RECEIVE_MESSAGES_FROM_OTHERS: on the classic nucleus an exact
/// topic otherwise delivers the subscriber's own messages too (PubSubIPCEventStreamAgent).
#[tokio::test(flavor = "multi_thread")]
async fn own_messages_are_not_delivered_back() {
    let (_d, n, c) = setup().await;
    let mut sub = c.subscribe_to_topic("t/own").await.unwrap();
    c.publish_to_topic("t/own", json!({"mine": true}))
        .await
        .unwrap();
    n.publish_local("t/own", json!({"other": true}));
    let m = sub.next().await.unwrap().unwrap();
    assert_eq!(
        m.json_message.unwrap().message,
        json!({"other": true}),
        "the first message delivered is the other component's"
    );
}

/// A call the nucleus never answers ends with a timeout naming the operation; the connection
/// stays usable (a busy nucleus is not a lost one).
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_call_times_out_and_the_connection_stays() {
    let (_d, n, c) = setup().await;
    n.never_answer("UpdateState");
    c.set_call_timeout(Duration::from_millis(300));
    let e = c.update_state(LifecycleState::Running).await.unwrap_err();
    assert!(
        matches!(&e, Error::Timeout { operation, .. } if operation.contains("UpdateState")),
        "{e:?}"
    );
    assert!(!e.is_connection_error());
    assert!(!c.is_closed());
    c.publish_to_topic("t", json!({"still": "working"}))
        .await
        .unwrap();
}
