//! JSON shapes of the operations the component uses, camelCase as on the wire. Optional fields
//! are omitted when unset, as AWS's clients do; blobs are standard base64.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Operation names (`operation` header).
pub mod op {
    /// GetConfiguration.
    pub const GET_CONFIGURATION: &str = "aws.greengrass#GetConfiguration";
    /// SubscribeToConfigurationUpdate.
    pub const SUBSCRIBE_TO_CONFIGURATION_UPDATE: &str =
        "aws.greengrass#SubscribeToConfigurationUpdate";
    /// UpdateState.
    pub const UPDATE_STATE: &str = "aws.greengrass#UpdateState";
    /// PublishToIoTCore.
    pub const PUBLISH_TO_IOT_CORE: &str = "aws.greengrass#PublishToIoTCore";
    /// PublishToTopic.
    pub const PUBLISH_TO_TOPIC: &str = "aws.greengrass#PublishToTopic";
    /// SubscribeToTopic.
    pub const SUBSCRIBE_TO_TOPIC: &str = "aws.greengrass#SubscribeToTopic";
    /// SubscribeToComponentUpdates.
    pub const SUBSCRIBE_TO_COMPONENT_UPDATES: &str = "aws.greengrass#SubscribeToComponentUpdates";
    /// DeferComponentUpdate.
    pub const DEFER_COMPONENT_UPDATE: &str = "aws.greengrass#DeferComponentUpdate";
}

/// GetConfiguration / SubscribeToConfigurationUpdate request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationRequest<'a> {
    /// Another component's configuration; `None` = the caller's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component_name: Option<&'a str>,
    /// Path in the configuration; empty = all of it.
    pub key_path: &'a [&'a str],
}

/// GetConfiguration response.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetConfigurationResponse {
    /// The component read.
    #[serde(default)]
    pub component_name: Option<String>,
    /// The value: a subtree, or `{"<leaf>": value}` for a leaf.
    #[serde(default)]
    pub value: Value,
}

/// `aws.greengrass#ConfigurationUpdateEvents`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationUpdateEvents {
    /// The event.
    pub configuration_update_event: Option<ConfigurationUpdateEvent>,
}

/// A configuration change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationUpdateEvent {
    /// The component whose configuration changed.
    pub component_name: String,
    /// The changed node.
    #[serde(default)]
    pub key_path: Vec<String>,
}

/// Lifecycle states a component may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LifecycleState {
    /// Working.
    Running,
    /// Broken in a way a restart could fix.
    Errored,
}

/// UpdateState request.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStateRequest {
    /// The state.
    pub state: LifecycleState,
}

/// PublishToIoTCore request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishToIoTCoreRequest<'a> {
    /// MQTT topic.
    pub topic_name: &'a str,
    /// `"0"` or `"1"`.
    pub qos: &'a str,
    /// Base64 payload.
    pub payload: String,
}

/// PublishToTopic request with a JSON message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishToTopicRequest<'a> {
    /// Local topic.
    pub topic: &'a str,
    /// The message.
    pub publish_message: PublishMessage,
}

/// The PublishToTopic union: exactly one of the two is set.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishMessage {
    /// `{"message": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_message: Option<JsonMessage>,
    /// `{"message": "<base64>"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub binary_message: Option<BinaryMessage>,
}

/// A binary pub/sub message (the blob is base64 in the JSON payload).
#[derive(Debug, Clone, Serialize)]
pub struct BinaryMessage {
    /// Base64 of the bytes.
    pub message: String,
}

/// A JSON pub/sub message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonMessage {
    /// The document.
    pub message: Value,
}

/// SubscribeToTopic request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeToTopicRequest<'a> {
    /// Local topic (may hold wildcards).
    pub topic: &'a str,
    /// `RECEIVE_MESSAGES_FROM_OTHERS`: not the subscriber's own publishes (nucleus ≥ 2.6.0;
    /// older ones and lite ignore the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receive_mode: Option<&'static str>,
}

/// `aws.greengrass#SubscriptionResponseMessage`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionResponseMessage {
    /// A JSON message.
    #[serde(default)]
    pub json_message: Option<ReceivedJson>,
    /// A binary message.
    #[serde(default)]
    pub binary_message: Option<ReceivedBinary>,
}

/// A received JSON message.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceivedJson {
    /// The document.
    #[serde(default)]
    pub message: Value,
}

/// A received binary message.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceivedBinary {
    /// Base64 payload.
    #[serde(default)]
    pub message: String,
}

/// `aws.greengrass#ComponentUpdatePolicyEvents`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComponentUpdatePolicyEvents {
    /// A deployment wants to update components.
    #[serde(default)]
    pub pre_update_event: Option<PreUpdateEvent>,
    /// A deployment finished updating.
    #[serde(default)]
    pub post_update_event: Option<PostUpdateEvent>,
}

/// Before an update.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreUpdateEvent {
    /// The deployment.
    pub deployment_id: String,
    /// Whether the nucleus itself restarts.
    #[serde(default)]
    pub is_ggc_restarting: bool,
}

/// After an update.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostUpdateEvent {
    /// The deployment.
    pub deployment_id: String,
}

/// DeferComponentUpdate request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeferComponentUpdateRequest<'a> {
    /// The deployment.
    pub deployment_id: &'a str,
    /// Why (shown in the deployment status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    /// Ask again after this long; 0 = go ahead.
    pub recheck_after_ms: u64,
}

/// Empty request/response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Empty {}
