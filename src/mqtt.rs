//! Status over MQTT for devices without Greengrass (`mqtt` setting): mutual TLS with the
//! device certificate, client id = thing name, QoS 1, reconnect with backoff, an "offline"
//! last will, and the trigger topic subscribed on every connection.
//!
//! One driver task owns the rumqttc event loop; [`Mqtt`] is the handle the supervisor uses.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::MqttSettings;
use crate::credentials::{self, ProviderSettings};

/// Reconnect backoff.
const RECONNECT: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
};
/// Requests queued for the event loop before publishes are dropped (status is periodic).
const QUEUE: usize = 32;

/// MQTT failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate, key or CA cannot be used.
    #[error("cannot set up TLS for MQTT")]
    Tls(#[source] credentials::Error),
}

/// A running MQTT connection.
#[derive(Debug)]
pub struct Mqtt {
    client: AsyncClient,
    status_topic: Option<String>,
    cancel: CancellationToken,
    driver: JoinHandle<()>,
}

impl Mqtt {
    /// Connects in the background. `offline` is the last-will payload on `status_topic`.
    /// Messages on `trigger_topic` are signalled on the returned receiver.
    ///
    /// # Errors
    /// [`Error::Tls`] if the certificate, key or CA cannot be used.
    pub fn start(
        settings: &MqttSettings,
        identity: &ProviderSettings,
        status_topic: Option<String>,
        trigger_topic: Option<String>,
        offline: Vec<u8>,
    ) -> Result<(Self, mpsc::Receiver<()>), Error> {
        let mut tls_identity = identity.clone();
        if let Some(ca) = &settings.ca_path {
            tls_identity.root_ca_path.clone_from(ca);
        }
        // AWS IoT accepts MQTT on 443 only with this ALPN.
        let alpn: &[&[u8]] = if settings.endpoint.port == 443 {
            &[b"x-amzn-mqtt-ca"]
        } else {
            &[]
        };
        let tls = credentials::client_tls_config(&tls_identity, alpn).map_err(Error::Tls)?;
        let mut options = MqttOptions::new(
            &settings.client_id,
            &settings.endpoint.host,
            settings.endpoint.port,
        );
        options.set_keep_alive(Duration::from_secs(30));
        // rumqttc refuses publishes over 10 KiB by default, and a refused publish drops the
        // connection (and fires the OFFLINE last will). AWS IoT Core takes 128 KiB.
        options.set_max_packet_size(IOT_CORE_MAX_PACKET, IOT_CORE_MAX_PACKET);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
        if let Some(topic) = &status_topic {
            options.set_last_will(LastWill::new(topic, offline, QoS::AtLeastOnce, false));
        }
        let (client, mut events) = AsyncClient::new(options, QUEUE);
        let (trigger_tx, trigger_rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let (c, sub_client, endpoint) = (
            cancel.clone(),
            client.clone(),
            settings.endpoint.to_string(),
        );
        let driver = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                let event = tokio::select! {
                    // poll() is cancel-safe: state lives in the event loop, not the future.
                    () = c.cancelled() => break,
                    e = events.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(%endpoint, "MQTT connected");
                        failures = 0;
                        if let Some(t) = &trigger_topic {
                            // Queued; the event loop sends it on this connection.
                            if let Err(e) = sub_client.try_subscribe(t, QoS::AtLeastOnce) {
                                tracing::warn!(topic = %t, error = %e, "cannot subscribe to the trigger topic");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p)))
                        if trigger_topic
                            .as_deref()
                            .is_some_and(|t| crate::topic::matches(t, &p.topic)) =>
                    {
                        tracing::info!(topic = %p.topic, "sync requested over MQTT");
                        let _ = trigger_tx.try_send(());
                    }
                    // stop() queued the offline status, then DISCONNECT: once that is sent, end.
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        let delay = RECONNECT.random_delay(failures);
                        if failures == 0 {
                            tracing::warn!(%endpoint, error = %e, "MQTT connection failed; retrying with backoff");
                        } else {
                            tracing::debug!(%endpoint, error = %e, ?delay, "MQTT still disconnected");
                        }
                        failures = failures.saturating_add(1);
                        tokio::select! {
                            () = c.cancelled() => break,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        });
        Ok((
            Self {
                client,
                status_topic,
                cancel,
                driver,
            },
            trigger_rx,
        ))
    }

    /// Queues a status document (QoS 1). Never blocks: if the queue is full, it is dropped.
    pub fn publish(&self, payload: Vec<u8>) {
        if let Some(topic) = &self.status_topic {
            if let Err(e) = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
            {
                tracing::warn!(topic = %topic, error = %e, "status not published over MQTT");
            }
        }
    }

    /// Publishes `offline`, disconnects cleanly (no last will) and stops the driver.
    pub async fn stop(self, offline: Vec<u8>) {
        self.publish(offline);
        let _ = self.client.try_disconnect();
        // Give the event loop a moment to flush the offline status and DISCONNECT.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !self.driver.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        self.cancel.cancel();
        let _ = self.driver.await;
    }
}

/// AWS IoT Core's MQTT message size limit (128 KiB), for both directions.
pub const IOT_CORE_MAX_PACKET: usize = 128 * 1024;
