//! Identity headers set by the front proxy (kube-apiserver's aggregator), read exactly as
//! `k8s.io/apiserver`'s requestheader authenticator reads them. Only called once the proxy's
//! certificate has been verified: these headers from anyone else are never looked at.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::UserInfo;
use super::trust::RequestHeaderSettings;

/// The identity the proxy asserts, or `None` when no user-name header has a value (then the
/// next authenticator gets its turn, as in kube).
pub fn identity(headers: &HeaderMap, settings: &RequestHeaderSettings) -> Option<UserInfo> {
    let name = first_value(headers, &settings.username_headers)?;
    let groups = settings
        .group_headers
        .iter()
        .flat_map(|header| headers.get_all(header))
        .map(|value| text(value.as_bytes()))
        // One header line per group; values are never split on commas.
        .filter(|value| !value.is_empty())
        .collect();
    let uid = first_value(headers, &settings.uid_headers).unwrap_or_default();
    Some(UserInfo {
        name,
        uid,
        groups,
        extra: extra(headers, &settings.extra_prefixes),
    })
}

/// Every header line `identity` reads, in the order it reads them: the user-name, group and
/// UID headers' values, then each extra-prefixed header's. Two requests with equal sequences
/// assert the same identity, so a connection can reuse the last one it parsed (see
/// `connection::ClientCertificate::front_proxy_identity`).
pub fn identity_lines<'a>(
    headers: &'a HeaderMap,
    settings: &'a RequestHeaderSettings,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    let named = settings
        .username_headers
        .iter()
        .chain(&settings.group_headers)
        .chain(&settings.uid_headers)
        .flat_map(move |name| headers.get_all(name).iter().map(move |value| (name, value)));
    let extra = settings.extra_prefixes.iter().flat_map(move |prefix| {
        headers
            .keys()
            .filter(move |name| name.as_str().starts_with(prefix.as_str()))
            .flat_map(move |name| headers.get_all(name).iter().map(move |value| (name, value)))
    });
    named.chain(extra)
}

/// Remove every identity header, so nothing downstream can mistake them for facts.
pub fn clear(headers: &mut HeaderMap, settings: &RequestHeaderSettings) {
    for header in settings
        .username_headers
        .iter()
        .chain(&settings.group_headers)
        .chain(&settings.uid_headers)
    {
        headers.remove(header);
    }
    // One at a time: requests rarely carry more than a few, and no list is allocated.
    while let Some(name) = headers
        .keys()
        .find(|name| {
            settings
                .extra_prefixes
                .iter()
                .any(|prefix| name.as_str().starts_with(prefix.as_str()))
        })
        .cloned()
    {
        headers.remove(name);
    }
}

fn first_value(headers: &HeaderMap, names: &[HeaderName]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| headers.get(name))
        .map(|value| text(value.as_bytes()))
        .find(|value| !value.is_empty())
}

/// `<prefix><key>: value` headers: the key is lowercased and then percent-decoded (kube's
/// order), a malformed encoding is kept as sent, and every value of every matching header line is
/// kept in order.
fn extra(headers: &HeaderMap, prefixes: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for prefix in prefixes {
        // HeaderMap names are lowercase already; prefixes were lowercased when configured.
        for name in headers.keys() {
            let Some(encoded) = name.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            let key = unescape(encoded);
            extra
                .entry(key)
                .or_default()
                .extend(headers.get_all(name).iter().map(|v| text(v.as_bytes())));
        }
    }
    extra
}

/// Go's `url.PathUnescape`, falling back to the raw key on malformed input as kube does.
fn unescape(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte == b'%' {
            // Exactly two hex digits (from_str_radix alone would take "+1").
            let hex = bytes
                .get(index + 1..index + 3)
                .filter(|pair| pair.iter().all(u8::is_ascii_hexdigit))
                .and_then(|pair| std::str::from_utf8(pair).ok())
                .and_then(|pair| u8::from_str_radix(pair, 16).ok());
            match hex {
                Some(value) => {
                    decoded.push(value);
                    index += 3;
                }
                None => return encoded.to_string(),
            }
        } else {
            decoded.push(byte);
            index += 1;
        }
    }
    String::from_utf8(decoded).unwrap_or_else(|_| encoded.to_string())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    fn settings() -> RequestHeaderSettings {
        RequestHeaderSettings::new(
            vec![],
            &["X-Remote-User".into()],
            &["X-Remote-Group".into()],
            &["X-Remote-Uid".into()],
            &["X-Remote-Extra-".into()],
        )
        .unwrap()
    }

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_aggregators_headers_as_it_sends_them() {
        let map = headers(&[
            (
                "X-Remote-User",
                "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            ),
            ("X-Remote-Group", "system:serviceaccounts"),
            ("X-Remote-Group", "system:serviceaccounts:kube-system"),
            ("X-Remote-Group", "a,b"),
            ("X-Remote-Group", ""),
            ("X-Remote-Group", "system:authenticated"),
            ("X-Remote-Uid", "4f0c-uid"),
            (
                "X-Remote-Extra-Authentication.kubernetes.io%2fcredential-Id",
                "JTI=abc",
            ),
            (
                "X-Remote-Extra-authentication.kubernetes.io%2Fpod-name",
                "hpa-0",
            ),
            ("X-Remote-Extra-Scopes", "one"),
            ("X-Remote-Extra-scopes", "two"),
            ("X-Remote-Extra-Bad%zzKey", "v"),
            ("X-Other", "ignored"),
        ]);
        let user = identity(&map, &settings()).unwrap();
        assert_eq!(
            user.name,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(
            user.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "a,b",
                "system:authenticated"
            ]
        );
        assert_eq!(user.uid, "4f0c-uid");
        let expected: BTreeMap<String, Vec<String>> = [
            (
                "authentication.kubernetes.io/credential-id",
                vec!["JTI=abc"],
            ),
            ("authentication.kubernetes.io/pod-name", vec!["hpa-0"]),
            ("scopes", vec!["one", "two"]),
            ("bad%zzkey", vec!["v"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(user.extra, expected);
    }

    #[test]
    fn no_user_name_means_no_identity_and_clear_removes_everything() {
        let mut map = headers(&[
            ("X-Remote-User", ""),
            ("X-Remote-Group", "system:masters"),
            ("X-Remote-Extra-Foo", "bar"),
            ("Accept", "application/json"),
        ]);
        assert!(identity(&map, &settings()).is_none());
        clear(&mut map, &settings());
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("accept"));
    }

    #[test]
    fn identity_lines_cover_everything_identity_reads_and_nothing_else() {
        let map = headers(&[
            ("X-Remote-Extra-Scopes", "one"),
            ("X-Remote-User", "bob"),
            ("X-Remote-Group", "a"),
            ("X-Remote-Group", "b"),
            ("X-Remote-Uid", "7"),
            ("X-Remote-Extra-Scopes", "two"),
            ("Accept", "application/json"),
        ]);
        let lines: Vec<(String, String)> = identity_lines(&map, &settings())
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_string()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("x-remote-user", "bob"),
            ("x-remote-group", "a"),
            ("x-remote-group", "b"),
            ("x-remote-uid", "7"),
            ("x-remote-extra-scopes", "one"),
            ("x-remote-extra-scopes", "two"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(lines, expected);
    }

    #[test]
    fn first_non_empty_user_header_wins() {
        let settings = RequestHeaderSettings::new(
            vec![],
            &["X-Proxy-User".into(), "X-Remote-User".into()],
            &[],
            &[],
            &[],
        )
        .unwrap();
        let map = headers(&[("X-Proxy-User", ""), ("X-Remote-User", "bob")]);
        assert_eq!(identity(&map, &settings).unwrap().name, "bob");
    }

    #[test]
    fn unescape_matches_go_path_unescape() {
        assert_eq!(unescape("a%2fb"), "a/b");
        assert_eq!(unescape("a%2Fb%20c"), "a/b c");
        assert_eq!(unescape("plain+key"), "plain+key");
        assert_eq!(unescape("bad%2"), "bad%2");
        assert_eq!(unescape("bad%+1"), "bad%+1");
        assert_eq!(unescape("%e2%9c%93"), "✓");
    }
}
