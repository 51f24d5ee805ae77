//! What a message on the trigger topic asks for (pure): any message starts a pass, except a
//! JSON object with `rollback`, which switches `localDir` back to a kept release
//! (`{"rollback": "<id>"}`, or `"previous"`/`null` for the one live before).

/// A trigger message's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Sync now.
    Sync,
    /// Roll back to this release (`None`: the previous one).
    Rollback(Option<String>),
}

/// Reads a trigger message's payload.
///
/// # Errors
/// A `rollback` that is neither a release id, `"previous"` nor `null`, with the fix.
pub fn parse(payload: &[u8]) -> Result<Request, String> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(payload) else {
        return Ok(Request::Sync);
    };
    match map.get("rollback") {
        None => Ok(Request::Sync),
        Some(serde_json::Value::Null) => Ok(Request::Rollback(None)),
        Some(serde_json::Value::String(s)) if s.trim() == "previous" => Ok(Request::Rollback(None)),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
            Ok(Request::Rollback(Some(s.trim().to_owned())))
        }
        Some(other) => Err(format!(
            "trigger message: rollback must be a release id (see `gg-s3-sync releases`), \"previous\" or null, got {other}"
        )),
    }
}

/// The payload of an IPC pub/sub message: a JSON message's document, or a binary message's
/// bytes (base64 on the wire).
#[must_use]
pub fn payload_of(msg: &crate::ipc::model::SubscriptionResponseMessage) -> Vec<u8> {
    if let Some(j) = &msg.json_message {
        return serde_json::to_vec(&j.message).unwrap_or_default();
    }
    msg.binary_message
        .as_ref()
        .and_then(|b| aws_smithy_types::base64::decode(&b.message).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_message_syncs_and_rollback_names_a_release() {
        for p in [
            &b""[..],
            b"now",
            b"{}",
            b"[1]",
            br#"{"sync": true}"#,
            b"\xff",
        ] {
            assert_eq!(parse(p), Ok(Request::Sync), "{p:?}");
        }
        assert_eq!(
            parse(br#"{"rollback": "000003-tab"}"#),
            Ok(Request::Rollback(Some("000003-tab".into())))
        );
        assert_eq!(parse(br#"{"rollback": null}"#), Ok(Request::Rollback(None)));
        assert_eq!(
            parse(br#"{"rollback": "previous"}"#),
            Ok(Request::Rollback(None))
        );
        assert!(parse(br#"{"rollback": 3}"#)
            .unwrap_err()
            .contains("release id"));
        assert!(parse(br#"{"rollback": ""}"#).is_err());
    }

    #[test]
    fn payloads_of_json_and_binary_messages() {
        let m: crate::ipc::model::SubscriptionResponseMessage = serde_json::from_value(
            serde_json::json!({"jsonMessage": {"message": {"rollback": "x"}}}),
        )
        .unwrap();
        assert_eq!(
            parse(&payload_of(&m)),
            Ok(Request::Rollback(Some("x".into())))
        );
        let m: crate::ipc::model::SubscriptionResponseMessage = serde_json::from_value(
            serde_json::json!({"binaryMessage": {"message": aws_smithy_types::base64::encode(br#"{"rollback":null}"#)}}),
        )
        .unwrap();
        assert_eq!(parse(&payload_of(&m)), Ok(Request::Rollback(None)));
    }
}
