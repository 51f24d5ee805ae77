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
    fn no_proxy_lists() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "a.example.com"));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(no_proxy_matches("::1", "[::1]"));
    }
}
