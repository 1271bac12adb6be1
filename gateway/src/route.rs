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
    /// `/system/logs`
    Logs,
    /// `/system/scale-function/{name}`
    ScaleFunction(&'a str),
    /// `/system/prune`
    Prune,
    /// Any other `/system/...` path.
    UnknownSystem,
    /// `/function/{name}` and `/function/{name}/{rest...}`; `rest` starts
    /// with `/` and is what the handler sees as its path.
    Invoke {
        name: &'a str,
        rest: &'a str,
    },
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
        "/system/logs" => return Route::Logs,
        "/system/prune" => return Route::Prune,
        _ => {}
    }
    if let Some(name) = path.strip_prefix("/system/function/") {
        return Route::Function(name);
    }
    if let Some(name) = path.strip_prefix("/system/scale-function/") {
        return Route::ScaleFunction(name);
    }
    if path.starts_with("/system/") {
        return Route::UnknownSystem;
    }
    if let Some(tail) = path.strip_prefix("/function/") {
        let (name, rest) = match tail.find('/') {
            Some(i) => (&tail[..i], &tail[i..]),
            None => (tail, "/"),
        };
        if name.is_empty() {
            return Route::NotFound;
        }
        return Route::Invoke { name, rest };
    }
    Route::NotFound
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
    }
}
