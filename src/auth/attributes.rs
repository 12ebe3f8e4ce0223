//! What a request asks to do, in the terms authorization uses: `k8s.io/apiserver`'s
//! `RequestInfoFactory`, for the URL shapes an aggregated API server receives.
//!
//! `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible` is resource
//! `sqs-visible` in namespace `default` with verb `list` (a GET without an object name);
//! `GET /apis/external.metrics.k8s.io/v1beta1` is the non-resource path with verb `get`.

use axum::http::Method;

/// Authorization attributes of one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// A request for a resource.
    Resource {
        /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
        verb: String,
        /// API group (empty for the legacy core group).
        group: String,
        /// API version.
        version: String,
        /// The resource (for this server: the metric name).
        resource: String,
        /// Subresource, if any.
        subresource: String,
        /// Namespace, empty for cluster scope.
        namespace: String,
        /// Object name, empty for collections.
        name: String,
    },
    /// Any other path (discovery, OpenAPI).
    NonResource {
        /// The request path as sent.
        path: String,
        /// The lowercased HTTP method.
        verb: String,
    },
}

impl Attributes {
    /// Resolve `method path?query` as kube-apiserver would (on the percent-decoded path, as
    /// Go's `URL.Path` is).
    pub fn from_request(method: &Method, path: &str, query: Option<&str>) -> Self {
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let path: &str = &decoded;
        let non_resource = || Attributes::NonResource {
            path: path.to_string(),
            verb: method.as_str().to_ascii_lowercase(),
        };
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match parts.as_slice() {
            // /apis/{group}/{version}/{...}
            ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
            // /api/{version}/{...}: the legacy core group
            ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
            _ => return non_resource(),
        };
        // /{watch|proxy}/... name the verb in the path.
        let (path_verb, rest) = match rest {
            [verb @ ("watch" | "proxy"), after @ ..] if !after.is_empty() => (Some(*verb), after),
            _ => (None, rest),
        };
        // /namespaces/{ns}/{resource}/...; `namespaces/{ns}` alone or with one of the namespace's
        // own subresources is the namespace object.
        let (namespace, rest) = match rest {
            ["namespaces", namespace, after @ ..]
                if !after.is_empty() && !matches!(after[0], "status" | "finalize") =>
            {
                (*namespace, after)
            }
            ["namespaces", namespace, ..] => (*namespace, rest),
            _ => ("", rest),
        };
        let resource = rest.first().copied().unwrap_or_default();
        let name = rest.get(1).copied().unwrap_or_default();
        let subresource = rest.get(2).copied().unwrap_or_default();
        let verb = match (path_verb, method) {
            (Some(verb), _) => verb,
            (None, &Method::GET | &Method::HEAD) if name.is_empty() => {
                if watch_requested(query) {
                    "watch"
                } else {
                    "list"
                }
            }
            (None, &Method::GET | &Method::HEAD) => "get",
            (None, &Method::POST) => "create",
            (None, &Method::PUT) => "update",
            (None, &Method::PATCH) => "patch",
            (None, &Method::DELETE) if name.is_empty() => "deletecollection",
            (None, &Method::DELETE) => "delete",
            // kube leaves the verb empty for other methods; nothing grants an empty verb.
            (None, _) => "",
        };
        Attributes::Resource {
            verb: verb.to_string(),
            group: group.to_string(),
            version: version.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// What the request asks, for logs: `list external.metrics.k8s.io/sqs-visible in default`,
    /// `get /apis`. Says nothing about who asks.
    pub fn describe(&self) -> String {
        match self {
            Attributes::NonResource { path, verb } => format!("{verb} {path}"),
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                name,
                ..
            } => {
                let mut text = format!("{verb} {group}/{resource}");
                if !subresource.is_empty() {
                    text = format!("{text}/{subresource}");
                }
                if !name.is_empty() {
                    text = format!("{text} {name}");
                }
                if !namespace.is_empty() {
                    text = format!("{text} in {namespace}");
                }
                text
            }
        }
    }

    /// The explanation kube-apiserver gives when the decision is "no" (`forbiddenMessage`), with
    /// the authorizer's reason appended when it gave one.
    pub fn forbidden_explanation(&self, user: &str, reason: &str) -> String {
        let message = match self {
            Attributes::NonResource { path, verb } => {
                format!("User {user:?} cannot {verb} path {path:?}")
            }
            Attributes::Resource {
                verb,
                group,
                resource,
                subresource,
                namespace,
                ..
            } => {
                let resource = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                if namespace.is_empty() {
                    format!(
                        "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} at the cluster scope"
                    )
                } else {
                    format!(
                        "User {user:?} cannot {verb} resource {resource:?} in API group {group:?} in the namespace {namespace:?}"
                    )
                }
            }
        };
        if reason.is_empty() {
            message
        } else {
            format!("{message}: {reason}")
        }
    }
}

/// `?watch=` with any value but `0` or `false` turns a list into a watch.
fn watch_requested(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "watch")
            .is_some_and(|(_, value)| {
                let value = value.to_ascii_lowercase();
                value != "0" && value != "false"
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(verb: &str, resource: &str, namespace: &str, name: &str) -> Attributes {
        Attributes::Resource {
            verb: verb.into(),
            group: "external.metrics.k8s.io".into(),
            version: "v1beta1".into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn value_requests_are_a_list_of_the_metric_in_the_namespace() {
        let attributes = Attributes::from_request(
            &Method::GET,
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/sqs-visible",
            Some("labelSelector=QueueName%3Dorders"),
        );
        assert_eq!(attributes, resource("list", "sqs-visible", "default", ""));
        assert_eq!(
            attributes.describe(),
            "list external.metrics.k8s.io/sqs-visible in default"
        );
        assert_eq!(
            attributes.forbidden_explanation("system:anonymous", ""),
            r#"User "system:anonymous" cannot list resource "sqs-visible" in API group "external.metrics.k8s.io" in the namespace "default""#
        );
        assert_eq!(
            attributes.forbidden_explanation("bob", "no RBAC policy matched"),
            r#"User "bob" cannot list resource "sqs-visible" in API group "external.metrics.k8s.io" in the namespace "default": no RBAC policy matched"#
        );
    }

    #[test]
    fn discovery_and_openapi_are_non_resource_gets() {
        for path in [
            "/apis",
            "/apis/external.metrics.k8s.io",
            "/apis/external.metrics.k8s.io/v1beta1",
            "/apis/external.metrics.k8s.io/v1beta1/",
            "/openapi/v2",
            "/",
        ] {
            assert_eq!(
                Attributes::from_request(&Method::GET, path, None),
                Attributes::NonResource {
                    path: path.into(),
                    verb: "get".into()
                },
                "{path}"
            );
        }
        let attributes = Attributes::from_request(&Method::GET, "/apis", None);
        assert_eq!(
            attributes.forbidden_explanation("bob", ""),
            r#"User "bob" cannot get path "/apis""#
        );
    }

    #[test]
    fn other_shapes_follow_kube() {
        let base = "/apis/external.metrics.k8s.io/v1beta1";
        let at = |method: Method, path: &str, query: Option<&str>| {
            Attributes::from_request(&method, &format!("{base}{path}"), query)
        };
        assert_eq!(
            at(Method::GET, "/namespaces/default/m/x", None),
            resource("get", "m", "default", "x")
        );
        assert_eq!(
            at(Method::GET, "/namespaces/default/m", Some("watch=true")),
            resource("watch", "m", "default", "")
        );
        assert_eq!(
            at(Method::GET, "/namespaces/default/m", Some("watch=false")),
            resource("list", "m", "default", "")
        );
        assert_eq!(
            at(Method::POST, "/namespaces/default/m", None),
            resource("create", "m", "default", "")
        );
        assert_eq!(
            at(Method::DELETE, "/namespaces/default/m", None),
            resource("deletecollection", "m", "default", "")
        );
        assert_eq!(at(Method::GET, "/m", None), resource("list", "m", "", ""));
        // Authorization sees the name the handler serves, not its encoding.
        assert_eq!(
            at(Method::GET, "/namespaces/default/sqs%2Dvisible", None),
            resource("list", "sqs-visible", "default", "")
        );
        assert_eq!(
            at(Method::GET, "/m", None).forbidden_explanation("bob", ""),
            r#"User "bob" cannot list resource "m" in API group "external.metrics.k8s.io" at the cluster scope"#
        );
        // `namespaces/{ns}` is the namespace object itself (kube records it as its own namespace).
        assert_eq!(
            at(Method::GET, "/namespaces/default", None),
            resource("get", "namespaces", "default", "default")
        );
        assert_eq!(
            at(Method::GET, "/namespaces/default/status", None),
            Attributes::Resource {
                verb: "get".into(),
                group: "external.metrics.k8s.io".into(),
                version: "v1beta1".into(),
                resource: "namespaces".into(),
                subresource: "status".into(),
                namespace: "default".into(),
                name: "default".into(),
            }
        );
        let sub = at(Method::GET, "/namespaces/ns/m/x/scale", None);
        assert_eq!(
            sub.forbidden_explanation("bob", ""),
            r#"User "bob" cannot get resource "m/scale" in API group "external.metrics.k8s.io" in the namespace "ns""#
        );
        assert_eq!(
            Attributes::from_request(&Method::OPTIONS, "/apis", None),
            Attributes::NonResource {
                path: "/apis".into(),
                verb: "options".into()
            }
        );
        assert_eq!(
            at(Method::OPTIONS, "/namespaces/default/m", None),
            resource("", "m", "default", "")
        );
        assert_eq!(
            at(Method::GET, "/watch/namespaces/default/m", None),
            resource("watch", "m", "default", "")
        );
        assert_eq!(
            Attributes::from_request(
                &Method::GET,
                "/api/v1/namespaces/kube-system/configmaps",
                None
            ),
            Attributes::Resource {
                verb: "list".into(),
                group: String::new(),
                version: "v1".into(),
                resource: "configmaps".into(),
                subresource: String::new(),
                namespace: "kube-system".into(),
                name: String::new(),
            }
        );
    }
}
