//! Routing: a request path to a [`Route`], as a pure function so it can be
//! tested (and property-tested) without a server. Methods are checked by the
//! handlers, which answer 405 with an `Allow` header.

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Healthz,
    Metrics,
    SystemInfo,
    /// `/system/functions`
    Functions,
    /// `/system/function/{name}`
    Function(&'a str),
    /// `/system/artifacts`
    Artifacts,
    /// `/system/images`
    Images,
    /// `/system/pulls`
    Pulls,
    /// `/system/logs`
    Logs,
    /// `/system/scale-function/{name}`
    ScaleFunction(&'a str),
    /// `/system/prune`
    Prune,
    /// `/system/registries`
    Registries,
    /// `/system/secrets`
    Secrets,
    /// `/system/namespaces`
    Namespaces,
    /// `/system/namespace/{name}`
    Namespace(&'a str),
    /// `/system/tokens`
    Tokens,
    /// `/system/nodes`: the cluster's members.
    Nodes,
    /// `/system/blobs/{digest}`: an artifact, for a peer node.
    Blob(&'a str),
    /// `/system/tokens/{id}`
    Token(&'a str),
    /// `/system/revisions/{name}`
    Revisions(&'a str),
    /// `/system/rollback/{name}`
    Rollback(&'a str),
    /// Any other `/system/...` path.
    UnknownSystem,
    /// `/function/{name}` and `/function/{name}/{rest...}`; `rest` starts
    /// with `/` and is what the handler sees as its path.
    Invoke {
        name: &'a str,
        rest: &'a str,
    },
    /// `/async-function/{name}` and `/async-function/{name}/{rest...}`.
    InvokeAsync {
        name: &'a str,
        rest: &'a str,
    },
    /// AWS Lambda's Invoke API: `/2015-03-31/functions/{name}/invocations`.
    LambdaInvoke(&'a str),
    NotFound,
}

/// Routes a request path (without the query).
pub fn route(path: &str) -> Route<'_> {
    match path {
        "/healthz" => return Route::Healthz,
        "/metrics" => return Route::Metrics,
        "/system/info" => return Route::SystemInfo,
        "/system/functions" => return Route::Functions,
        "/system/artifacts" => return Route::Artifacts,
        "/system/images" => return Route::Images,
        "/system/pulls" => return Route::Pulls,
        "/system/logs" => return Route::Logs,
        "/system/prune" => return Route::Prune,
        "/system/registries" => return Route::Registries,
        "/system/secrets" => return Route::Secrets,
        "/system/namespaces" => return Route::Namespaces,
        "/system/tokens" => return Route::Tokens,
        "/system/nodes" => return Route::Nodes,
        _ => {}
    }
    if let Some(name) = path.strip_prefix("/system/function/") {
        return Route::Function(name);
    }
    if let Some(name) = path.strip_prefix("/system/scale-function/") {
        return Route::ScaleFunction(name);
    }
    if let Some(name) = path.strip_prefix("/system/revisions/") {
        return Route::Revisions(name);
    }
    if let Some(name) = path.strip_prefix("/system/rollback/") {
        return Route::Rollback(name);
    }
    if let Some(name) = path.strip_prefix("/system/namespace/") {
        return Route::Namespace(name);
    }
    if let Some(digest) = path.strip_prefix("/system/blobs/") {
        return Route::Blob(digest);
    }
    if let Some(id) = path.strip_prefix("/system/tokens/") {
        return Route::Token(id);
    }
    if path.starts_with("/system/") {
        return Route::UnknownSystem;
    }
    if let Some(tail) = path.strip_prefix("/function/") {
        return match split_name(tail) {
            Some((name, rest)) => Route::Invoke { name, rest },
            None => Route::NotFound,
        };
    }
    if let Some(name) = path
        .strip_prefix("/2015-03-31/functions/")
        .and_then(|rest| rest.strip_suffix("/invocations"))
        .filter(|name| !name.is_empty() && !name.contains('/'))
    {
        return Route::LambdaInvoke(name);
    }
    if let Some(tail) = path.strip_prefix("/async-function/") {
        return match split_name(tail) {
            Some((name, rest)) => Route::InvokeAsync { name, rest },
            None => Route::NotFound,
        };
    }
    Route::NotFound
}

/// `{name}[/{rest...}]` → (name, rest from `/`); `None` without a name.
fn split_name(tail: &str) -> Option<(&str, &str)> {
    let (name, rest) = match tail.find('/') {
        Some(i) => (&tail[..i], &tail[i..]),
        None => (tail, "/"),
    };
    (!name.is_empty()).then_some((name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes() {
        assert_eq!(route("/healthz"), Route::Healthz);
        assert_eq!(route("/system/functions"), Route::Functions);
        assert_eq!(route("/system/function/hello"), Route::Function("hello"));
        assert_eq!(route("/system/nope"), Route::UnknownSystem);
        assert_eq!(route("/system/secrets"), Route::Secrets);
        assert_eq!(route("/system/namespace/t"), Route::Namespace("t"));
        assert_eq!(route("/system/tokens"), Route::Tokens);
        assert_eq!(
            route("/2015-03-31/functions/f/invocations"),
            Route::LambdaInvoke("f")
        );
        assert_eq!(route("/2015-03-31/functions//invocations"), Route::NotFound);
        assert_eq!(route("/system/tokens/ab12"), Route::Token("ab12"));
        assert_eq!(route("/system/namespaces"), Route::Namespaces);
        assert_eq!(route("/system/revisions/hello"), Route::Revisions("hello"));
        assert_eq!(route("/system/rollback/hello"), Route::Rollback("hello"));
        assert_eq!(
            route("/function/hello"),
            Route::Invoke {
                name: "hello",
                rest: "/"
            }
        );
        assert_eq!(
            route("/function/hello/"),
            Route::Invoke {
                name: "hello",
                rest: "/"
            }
        );
        assert_eq!(
            route("/function/hello/a/b%20c"),
            Route::Invoke {
                name: "hello",
                rest: "/a/b%20c"
            }
        );
        assert_eq!(route("/function/"), Route::NotFound);
        assert_eq!(
            route("/async-function/hello/a"),
            Route::InvokeAsync {
                name: "hello",
                rest: "/a"
            }
        );
        assert_eq!(route("/async-function/"), Route::NotFound);
        assert_eq!(route("/function//x"), Route::NotFound);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/functionx/a"), Route::NotFound);
    }

    proptest! {
        #[test]
        fn invoke_routes_split_name_and_rest(name in "[a-z0-9][a-z0-9._-]{0,20}", rest in "(/[a-zA-Z0-9%._-]{0,8}){0,4}") {
            let path = format!("/function/{name}{rest}");
            match route(&path) {
                Route::Invoke { name: n, rest: r } => {
                    prop_assert_eq!(n, name.as_str());
                    prop_assert!(r.starts_with('/'));
                    prop_assert!(!n.contains('/'));
                    let expected_rest = if rest.is_empty() { "/" } else { rest.as_str() };
                    prop_assert_eq!(r, expected_rest);
                }
                other => prop_assert!(false, "{path} routed to {other:?}"),
            }
        }

        #[test]
        fn never_panics(path in "\\PC{0,64}") {
            let _ = route(&path);
        }

        /// Every name the control API accepts reaches its function, and
        /// only it, on every route that names one.
        #[test]
        fn accepted_names_route_to_themselves(
            name in "[a-z0-9][a-z0-9._-]{0,62}",
            rest in "(/[a-zA-Z0-9%._~!$&'()*+,;=:@-]{0,8}){0,4}",
        ) {
            prop_assume!(wisp_runner::spec::FunctionName::new(&name).is_ok());
            let status = format!("/system/function/{name}");
            prop_assert_eq!(route(&status), Route::Function(&name));
            let scale = format!("/system/scale-function/{name}");
            prop_assert_eq!(route(&scale), Route::ScaleFunction(&name));
            let path = format!("/function/{name}{rest}");
            let expected = if rest.is_empty() { "/" } else { rest.as_str() };
            prop_assert_eq!(route(&path), Route::Invoke { name: &name, rest: expected });
        }

        /// Whatever the path, a route's parts are cut from it: an invoked
        /// name is one non-empty segment, the handler's path is the rest.
        #[test]
        fn routes_are_cut_from_the_path(
            path in prop_oneof![
                "\\PC{0,48}",
                "/function/[a-z%./-]{0,12}(/[a-z%./]{0,6}){0,3}",
                "/system/[a-z%./-]{0,24}",
            ],
        ) {
            match route(&path) {
                Route::Invoke { name, rest } => {
                    prop_assert!(!name.is_empty() && !name.contains('/'));
                    prop_assert!(rest.starts_with('/'));
                    let whole = format!("/function/{name}{rest}");
                    let bare = format!("/function/{name}");
                    prop_assert!(whole == path || (rest == "/" && path == bare), "{}", path);
                }
                Route::Function(name) => prop_assert_eq!(format!("/system/function/{name}"), path),
                Route::ScaleFunction(name) => {
                    prop_assert_eq!(format!("/system/scale-function/{name}"), path)
                }
                Route::UnknownSystem => prop_assert!(path.starts_with("/system/")),
                Route::NotFound => {
                    prop_assert!(!path.starts_with("/system/"));
                    let invoked = path.strip_prefix("/function/").is_some_and(|t| !t.starts_with('/') && !t.is_empty());
                    prop_assert!(!invoked, "{path}");
                }
                _ => {}
            }
        }

        /// A percent-encoded or otherwise disguised name is not the name:
        /// it can only miss (404), never reach another function.
        #[test]
        fn disguised_names_are_not_valid_names(name in "[a-z0-9][a-z0-9._-]{0,20}", at in any::<prop::sample::Index>()) {
            let i = at.index(name.len());
            let disguised = format!("{}%{:02X}{}", &name[..i], name.as_bytes()[i], &name[i + 1..]);
            match route(&format!("/function/{disguised}")) {
                Route::Invoke { name: routed, .. } => {
                    prop_assert_eq!(routed, disguised.as_str());
                    prop_assert!(wisp_runner::spec::FunctionName::new(routed).is_err());
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
