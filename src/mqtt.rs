//! Status over MQTT for devices without Greengrass (`mqtt` setting): mutual TLS with the
//! device certificate, client id = thing name, QoS 1, reconnect with backoff, an "offline"
//! last will, and the trigger topic subscribed on every connection.
//!
//! One driver task owns the rumqttc event loop; [`Mqtt`] is the handle the supervisor uses.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, Proxy, ProxyAuth, ProxyType, QoS,
    TlsConfiguration, Transport,
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
    /// The proxy in the environment cannot carry MQTT.
    #[error("cannot reach the MQTT endpoint through the proxy")]
    Proxy(#[source] crate::proxy::Error),
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
    /// The payloads of messages on `trigger_topic` arrive on the returned receiver.
    ///
    /// # Errors
    /// [`Error::Tls`] if the certificate, key or CA cannot be used.
    pub fn start(
        settings: &MqttSettings,
        identity: &ProviderSettings,
        status_topic: Option<String>,
        trigger_topic: Option<String>,
        offline: Vec<u8>,
    ) -> Result<(Self, mpsc::Receiver<Vec<u8>>), Error> {
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
        // The nucleus's networkProxy arrives as HTTPS_PROXY/ALL_PROXY/NO_PROXY: MQTT (TLS)
        // tunnels through it with CONNECT, as the nucleus's own MQTT connection does. An
        // https:// proxy's CA is trusted from the root CA file, where the nucleus's
        // documentation has users append it.
        let tunnel = crate::proxy::tunnel_for(|k| std::env::var(k).ok(), &settings.endpoint.host)
            .map_err(Error::Proxy)?;
        let proxy_hint = tunnel.as_ref().map(|t| {
            format!(
                "the proxy {t} refused or broke the MQTT tunnel: check the user and password in \
                 HTTPS_PROXY (under Greengrass: the nucleus's networkProxy) and that the proxy \
                 allows CONNECT to port {}",
                settings.endpoint.port
            )
        });
        if let Some(t) = tunnel {
            let ty = if t.tls {
                let proxy_tls = credentials::proxy_tls_config(&tls_identity.root_ca_path)
                    .map_err(Error::Tls)?;
                ProxyType::Https(TlsConfiguration::Rustls(Arc::new(proxy_tls)))
            } else {
                ProxyType::Http
            };
            tracing::info!(proxy = %t, endpoint = %settings.endpoint, "MQTT goes through the proxy");
            let auth = t
                .credentials
                .clone()
                .map_or(ProxyAuth::None, |(username, password)| ProxyAuth::Basic {
                    username,
                    password,
                });
            options.set_proxy(Proxy {
                ty,
                auth,
                addr: t.host.clone(),
                port: t.port,
            });
        }
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
                        tracing::info!(topic = %p.topic, "trigger message over MQTT");
                        let _ = trigger_tx.try_send(p.payload.to_vec());
                    }
                    // stop() queued the offline status, then DISCONNECT: once that is sent, end.
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        let delay = RECONNECT.random_delay(failures);
                        let via_proxy = matches!(e, rumqttc::ConnectionError::Proxy(_));
                        if failures == 0 && via_proxy {
                            let hint = proxy_hint.as_deref().unwrap_or_default();
                            tracing::warn!(%endpoint, error = %e, "{hint}; retrying with backoff");
                        } else if failures == 0 {
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

    /// Queues `payload` on `topic` (QoS 1), e.g. a "release live" document.
    pub fn publish_to(&self, topic: &str, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            tracing::warn!(topic = %topic, error = %e, "not published over MQTT");
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
