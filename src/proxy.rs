//! Which proxy a request goes through (pure; the caller passes the environment).
//!
//! Both nuclei hand their `networkProxy` setting to components as `HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY` and `NO_PROXY` (upper and lower case; credentials as userinfo). The HTTP stacks
//! (reqwest for the credentials endpoint, the SDK's client for S3) read them themselves; this
//! module answers the same question for messages and `check`, with the password never shown.

/// The proxy for a request to `host` over `scheme` (`https` or `http`), as the HTTP clients
/// choose it: `NO_PROXY` first, then `HTTPS_PROXY`/`HTTP_PROXY`, then `ALL_PROXY`; upper case
/// before lower case. Returned without its credentials.
#[must_use]
pub fn for_request(
    get: impl Fn(&str) -> Option<String>,
    scheme: &str,
    host: &str,
) -> Option<String> {
    let var = |name: &str| {
        get(name)
            .or_else(|| get(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
    };
    if var("NO_PROXY").is_some_and(|list| no_proxy_matches(&list, host)) {
        return None;
    }
    let specific = if scheme == "https" {
        "HTTPS_PROXY"
    } else {
        "HTTP_PROXY"
    };
    var(specific)
        .or_else(|| var("ALL_PROXY"))
        .map(|p| redact(&p))
}

/// A proxy to tunnel a raw TCP connection through (`CONNECT`), parsed from the same variables.
#[derive(Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// `true` for an `https://` proxy (TLS to the proxy itself).
    pub tls: bool,
    /// The proxy's host.
    pub host: String,
    /// Its port (the scheme's default when the URL has none, as reqwest does).
    pub port: u16,
    /// Basic-auth user and password, percent-decoded.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Proxy failures (pure).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The proxy URL cannot be used for a tunnel.
    #[error("the proxy {proxy} (from {var}) cannot tunnel MQTT: {why}")]
    Unusable {
        /// The URL without credentials.
        proxy: String,
        /// The variable it came from.
        var: &'static str,
        /// Why.
        why: &'static str,
    },
}

/// The proxy a TLS connection to `host` (MQTT) tunnels through, chosen as
/// [`for_request`] chooses one for `https`; `None` to go direct.
///
/// # Errors
/// [`Error::Unusable`] for a SOCKS proxy or a URL without a host or with a bad port.
pub fn tunnel_for(
    get: impl Fn(&str) -> Option<String>,
    host: &str,
) -> Result<Option<Tunnel>, Error> {
    let var = |name: &'static str| {
        get(name)
            .or_else(|| get(&name.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
            .map(|v| (name, v.trim().to_owned()))
    };
    if var("NO_PROXY").is_some_and(|(_, list)| no_proxy_matches(&list, host)) {
        return Ok(None);
    }
    let Some((name, url)) = var("HTTPS_PROXY").or_else(|| var("ALL_PROXY")) else {
        return Ok(None);
    };
    let unusable = |why| Error::Unusable {
        proxy: redact(&url),
        var: name,
        why,
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url.as_str()));
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(unusable("only http:// and https:// proxies can tunnel it")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| unusable("its IPv6 host has no ']'"))?;
        match after.strip_prefix(':') {
            Some(p) => (
                h,
                p.parse()
                    .map_err(|_| unusable("its port is not a number"))?,
            ),
            None => (h, default_port),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| unusable("its port is not a number"))?,
            ),
            None => (hostport, default_port),
        }
    };
    if host.is_empty() {
        return Err(unusable("it has no host"));
    }
    let credentials = userinfo.map(|u| {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        (percent_decode(user), percent_decode(pass))
    });
    Ok(Some(Tunnel {
        tls,
        host: host.to_owned(),
        port,
        credentials,
    }))
}

/// `%XX` sequences decoded (userinfo in a proxy URL); anything else kept.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `NO_PROXY` semantics shared by curl and reqwest: `*`, exact hosts, and domain suffixes
/// (`.example.com` or `example.com` both match `a.example.com`).
#[must_use]
pub fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            let entry = entry.to_ascii_lowercase();
            let entry = entry.trim_start_matches('.');
            entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// A proxy URL without its credentials: `http://user:secret@proxy:3128` → `http://proxy:3128`.
#[must_use]
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{}", rest.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn chooses_like_the_http_clients_and_never_shows_the_password() {
        let e = env(&[
            ("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128"),
            ("http_proxy", "http://plain:8080"),
            ("NO_PROXY", "localhost,.internal, 169.254.169.254"),
        ]);
        assert_eq!(
            for_request(&e, "https", "abc.credentials.iot.eu-west-1.amazonaws.com").as_deref(),
            Some("http://proxy.corp:3128")
        );
        assert_eq!(
            for_request(&e, "http", "s3.amazonaws.com").as_deref(),
            Some("http://plain:8080")
        );
        assert_eq!(for_request(&e, "https", "localhost"), None);
        assert_eq!(for_request(&e, "https", "s3.eu.internal"), None);
        assert_eq!(for_request(env(&[]), "https", "h"), None);
        assert_eq!(
            for_request(env(&[("ALL_PROXY", "socks5://u:p@s:1080")]), "https", "h").as_deref(),
            Some("socks5://s:1080")
        );
    }

    #[test]
    fn tunnels_parse_like_the_http_clients_and_hide_the_password() {
        let t = tunnel_for(
            env(&[("https_proxy", "http://user:p%40ss@proxy.corp:3128/")]),
            "a1b2.iot.eu-west-1.amazonaws.com",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port),
            (false, "proxy.corp", 3128)
        );
        assert_eq!(t.credentials, Some(("user".into(), "p@ss".into())));
        assert!(!format!("{t:?}{t}").contains("p@ss"));
        assert_eq!(t.to_string(), "http://proxy.corp:3128");
        let t = tunnel_for(env(&[("HTTPS_PROXY", "https://proxy.corp")]), "h")
            .unwrap()
            .unwrap();
        assert_eq!((t.tls, t.port, t.credentials), (true, 443, None));
        let t = tunnel_for(env(&[("ALL_PROXY", "http://[fd00::1]:8080")]), "h")
            .unwrap()
            .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fd00::1", 8080));
        let t = tunnel_for(env(&[("HTTPS_PROXY", "proxy:3128")]), "h")
            .unwrap()
            .unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "proxy", 3128));
        // HTTP_PROXY is for plain-http requests; MQTT is TLS.
        assert_eq!(
            tunnel_for(env(&[("HTTP_PROXY", "http://p:1")]), "h").unwrap(),
            None
        );
        assert_eq!(
            tunnel_for(
                env(&[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", "localhost,.internal")
                ]),
                "broker.internal"
            )
            .unwrap(),
            None
        );
        let e = tunnel_for(env(&[("ALL_PROXY", "socks5://u:secret@s:1080")]), "h").unwrap_err();
        assert!(
            e.to_string().contains("ALL_PROXY") && !e.to_string().contains("secret"),
            "{e}"
        );
        assert!(tunnel_for(env(&[("HTTPS_PROXY", "http://p:notaport")]), "h").is_err());
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }

    #[test]
    fn no_proxy_lists() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "a.example.com"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("::1", "[::1]"));
    }
}
