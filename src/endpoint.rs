//! `host[:port]` HTTPS endpoints: the AWS IoT credentials provider and MQTT brokers (pure).

use std::fmt;

/// A `host[:port]` HTTPS endpoint (the AWS IoT credentials provider).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address; also the TLS SNI name.
    pub host: String,
    /// TCP port (443 unless given).
    pub port: u16,
}

impl Endpoint {
    /// Parses `host`, `host:port`, `[v6]:port`, or the same behind `https://` with an optional
    /// trailing `/`.
    ///
    /// # Errors
    /// Returns the problem, phrased for a [`FieldError`](crate::config::FieldError).
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        let s = s.strip_prefix("https://").unwrap_or(s);
        if s.contains("://") {
            return Err(format!(
                "expected a host name such as 'abc123.credentials.iot.us-east-1.amazonaws.com' \
                 (optionally ':port'), got '{input}'; only https is supported"
            ));
        }
        let s = s.strip_suffix('/').unwrap_or(s);
        if s.is_empty() {
            return Err("expected a host name, got an empty value".into());
        }
        if s.contains('/') {
            return Err(format!(
                "expected only a host name (and port), got a path in '{input}'; \
                 the component adds /role-aliases/<roleAlias>/credentials itself"
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("unterminated '[' in '{input}'"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("unexpected '{after}' after ']' in '{input}'")),
            };
            (h.to_owned(), port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (s.to_owned(), None),
            }
        };
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port must be 1-65535, got '{p}' in '{input}'"))?,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
            return Err(format!("'{host}' is not a valid host name"));
        }
        Ok(Self { host, port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = |s: &str| Endpoint::parse(s);
        assert_eq!(
            e("h.example.com").unwrap(),
            Endpoint {
                host: "h.example.com".into(),
                port: 443
            }
        );
        assert_eq!(e("localhost:8443").unwrap().port, 8443);
        assert_eq!(e("https://h.example.com/").unwrap().host, "h.example.com");
        assert_eq!(
            e("[::1]:8443").unwrap(),
            Endpoint {
                host: "::1".into(),
                port: 8443
            }
        );
        assert!(e("http://h").unwrap_err().contains("only https"));
        assert!(e("h/role-aliases/x").unwrap_err().contains("path"));
        assert!(e("h:0").unwrap_err().contains("1-65535"));
        assert!(e("h:99999").is_err());
        assert!(e("").is_err());
    }
}
