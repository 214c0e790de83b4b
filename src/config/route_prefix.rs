//! The route prefix the host serves the functions under (`/api/query`): `host.json`'s
//! `extensions.http.routePrefix`, or the app setting that overrides it (protocol §2.1).

use std::ffi::OsString;
use std::path::Path;

use serde_json::Value;

/// The app setting that overrides `extensions.http.routePrefix`: the host reads app settings
/// named `AzureFunctionsJobHost__<section>__<key>` over `host.json` (names matched
/// case-insensitively, `:` also separating segments), as for `enableForwardingHttpRequest`
/// (protocol §1, §2.1).
pub const ROUTE_PREFIX_SETTING: &str = "AzureFunctionsJobHost__extensions__http__routePrefix";

/// The route prefix the host serves the functions under: the [`ROUTE_PREFIX_SETTING`] app
/// setting when set, else `extensions.http.routePrefix` from `host.json` in `app_root` (keys
/// matched case-insensitively, as the host's configuration does), else `api` (protocol §2.1).
pub fn route_prefix(app_root: &Path) -> String {
    route_prefix_with(app_root, std::env::vars_os())
}

/// [`route_prefix`] with the environment given (tests).
fn route_prefix_with(
    app_root: &Path,
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> String {
    let setting = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let name = name.to_str()?.replace(':', "__");
            name.eq_ignore_ascii_case(ROUTE_PREFIX_SETTING)
                .then(|| value.into_string().ok())
                .flatten()
        })
        .last();
    setting
        .or_else(|| {
            let text = std::fs::read_to_string(app_root.join("host.json")).ok()?;
            let host: Value = serde_json::from_str(&text).ok()?;
            let http = get_ci(get_ci(&host, "extensions")?, "http")?;
            get_ci(http, "routePrefix")?.as_str().map(str::to_string)
        })
        .unwrap_or_else(|| "api".to_string())
}

/// The member `key` of the object `v`, the key matched case-insensitively.
fn get_ci<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Refuses a route prefix the router cannot serve: a segment starting with `:` or `*`, or a
/// `{`/`}` anywhere (axum's path syntax, which would panic at start-up), or a space (the host
/// forwards it percent-encoded, so no request could match).
///
/// # Errors
/// A message naming the setting and the character.
pub fn check_route_prefix(prefix: &str) -> Result<(), String> {
    let bad = prefix
        .split('/')
        .find_map(|segment| match segment.chars().next() {
            Some(c @ (':' | '*')) => Some(c),
            _ => segment
                .chars()
                .find(|c| matches!(c, '{' | '}') || c.is_whitespace()),
        });
    match bad {
        Some(c) => Err(format!(
            "extensions.http.routePrefix (host.json or {ROUTE_PREFIX_SETTING}) '{prefix}': \
             '{c}' cannot be served; use letters, digits, '-', '_', '.' and '/'"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_root_with(host_json: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "route-prefix-{}-{}",
            std::process::id(),
            host_json.len()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("host.json"), host_json).expect("host.json");
        dir
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn the_app_setting_overrides_host_json_and_keys_match_in_any_case() {
        let root = app_root_with(r#"{"Extensions":{"HTTP":{"RoutePrefix":"v2"}}}"#);
        assert_eq!(route_prefix_with(&root, vars(&[])), "v2");
        let set = |name: &str| route_prefix_with(&root, vars(&[("PATH", "/bin"), (name, "v1")]));
        assert_eq!(
            set("AzureFunctionsJobHost__extensions__http__routePrefix"),
            "v1"
        );
        assert_eq!(
            set("AZUREFUNCTIONSJOBHOST__EXTENSIONS__HTTP__ROUTEPREFIX"),
            "v1"
        );
        assert_eq!(
            set("AzureFunctionsJobHost:extensions:http:routePrefix"),
            "v1"
        );
        assert_eq!(set("AzureFunctionsJobHost__extensions__http__other"), "v2");
        // An empty setting is an empty prefix (payload mode only), not the default.
        let empty = vars(&[(ROUTE_PREFIX_SETTING, "")]);
        assert_eq!(route_prefix_with(&root, empty), "");
        let none = app_root_with(r#"{"extensions":{"http":{"routePrefix":null}},"version":"2.0"}"#);
        assert_eq!(route_prefix_with(&none, vars(&[])), "api");
        assert_eq!(
            route_prefix_with(Path::new("/nonexistent"), vars(&[])),
            "api"
        );
    }

    #[tokio::test]
    async fn prefixes_the_router_cannot_serve_are_refused_at_start_up() {
        for good in ["api", "", "v1/api", "my-app_1.0"] {
            assert!(check_route_prefix(good).is_ok(), "{good}");
        }
        for (bad, c) in [("*", '*'), ("api/:x", ':'), ("a{b}", '{'), ("a b", ' ')] {
            let e = check_route_prefix(bad).expect_err(bad);
            assert!(e.contains(&format!("'{c}'")), "{bad}: {e}");
            assert!(e.contains(ROUTE_PREFIX_SETTING), "{bad}: {e}");
        }
        // And every accepted one builds a router (axum panics on what the check refuses).
        for good in ["api", "v1/api", "my-app_1.0", "query", "invalidate"] {
            let settings = crate::config::Settings::from_lookup(|name| {
                match name {
                    "REDIS_CONNECTION_STRING" => Some("redis://127.0.0.1:1"),
                    "COSMOS_ENDPOINT" => Some("http://127.0.0.1:1/"),
                    "COSMOS_KEY" => Some("a2V5"),
                    "COSMOS_DATABASE" => Some("d"),
                    "COSMOS_CONTAINER" => Some("c"),
                    _ => None,
                }
                .map(str::to_string)
            })
            .expect("settings");
            let _ = crate::router(crate::build_state(&settings).expect("state"), good);
        }
    }
}
