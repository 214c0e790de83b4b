//! `function.json` (§2.5): bindings, the HTTP trigger, and loading every function of an app.

use crate::error::{EmulatorError, config_err};
use crate::host_config::WireMode;
use crate::json::Json;
use crate::process::log;
use crate::routing::RouteTemplate;
use std::path::Path;

/// One binding of a `function.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingSpec {
    /// `type`, e.g. `httpTrigger`, `http`, `queue`.
    pub kind: String,
    /// `direction`: `in`, `out` or `inout` (lower-cased).
    pub direction: String,
    /// `name`, e.g. `req`, `res`, `$return`.
    pub name: String,
}

/// The `httpTrigger` binding of a function.
#[derive(Clone, Debug)]
pub struct HttpTriggerSpec {
    /// Binding name: the key under `Data` in the payload (`req`).
    pub name: String,
    /// Allowed methods, upper-case; `None` = all methods.
    pub methods: Option<Vec<String>>,
    /// `route` template text as written (`None` = function name).
    pub route: Option<String>,
    /// `authLevel` (lower-case; default `function`). Not enforced (see [`HostEmulator`]).
    pub auth_level: String,
    pub(crate) template: RouteTemplate,
}

/// A function discovered under the app root (folder name = function name, §2.5).
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    /// Function name (folder name): the payload-mode path `/{name}`.
    pub name: String,
    /// All bindings in file order.
    pub bindings: Vec<BindingSpec>,
    /// The HTTP trigger, if any (functions without one are not callable through the emulator).
    pub http_trigger: Option<HttpTriggerSpec>,
    /// Name of the `http` output binding (`res` or `$return`), if any.
    pub http_output: Option<String>,
}

impl FunctionSpec {
    /// `IsHttpInAndOutFunction` (§1): exactly one input binding (direction ≠ out), of type
    /// `httpTrigger`, and exactly one output binding (direction ≠ in), of type `http`;
    /// types compared case-insensitively.
    pub fn is_http_in_and_out(&self) -> bool {
        let inputs: Vec<&BindingSpec> = self
            .bindings
            .iter()
            .filter(|b| b.direction != "out")
            .collect();
        let outputs: Vec<&BindingSpec> = self
            .bindings
            .iter()
            .filter(|b| b.direction != "in")
            .collect();
        inputs.len() == 1
            && outputs.len() == 1
            && inputs[0].kind.eq_ignore_ascii_case("httpTrigger")
            && outputs[0].kind.eq_ignore_ascii_case("http")
    }

    /// Wire mode for this function given the app's `enableForwardingHttpRequest` (§1).
    pub fn wire_mode(&self, enable_forwarding: bool) -> WireMode {
        if enable_forwarding && self.is_http_in_and_out() {
            WireMode::Forwarding
        } else {
            WireMode::Payload
        }
    }

    /// Client-facing route below the prefix: the `route` template or the function name.
    pub fn route_text(&self) -> String {
        self.http_trigger
            .as_ref()
            .and_then(|t| t.route.clone())
            .unwrap_or_else(|| self.name.clone())
    }

    pub(crate) fn has_return_binding(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.direction != "in" && b.name == "$return")
    }
}

/// Parses one `function.json` (property names matched case-insensitively).
pub fn parse_function_json(name: &str, text: &str) -> Result<FunctionSpec, EmulatorError> {
    let root = Json::parse(text.as_bytes())
        .map_err(|e| config_err(format!("{name}/function.json is not valid JSON: {e}")))?;
    let bindings_json = match root.get_ci("bindings") {
        Some(Json::Array(items)) => items.clone(),
        _ => {
            return Err(config_err(format!(
                "{name}/function.json: 'bindings' must be an array"
            )));
        }
    };
    let mut bindings = Vec::new();
    let mut http_trigger = None;
    let mut http_output = None;
    for (i, b) in bindings_json.iter().enumerate() {
        let field = |key: &str| -> Result<String, EmulatorError> {
            match b.get_ci(key) {
                Some(Json::String(s)) => Ok(s.clone()),
                None | Some(Json::Null) => Ok(String::new()),
                Some(other) => Err(config_err(format!(
                    "{name}/function.json bindings[{i}].{key} must be a string, found {}",
                    other.to_compact_string()
                ))),
            }
        };
        let kind = field("type")?;
        let direction = field("direction")?.to_ascii_lowercase();
        let binding_name = field("name")?;
        if kind.is_empty() || binding_name.is_empty() {
            return Err(config_err(format!(
                "{name}/function.json bindings[{i}] needs 'type' and 'name'"
            )));
        }
        if !matches!(direction.as_str(), "in" | "out" | "inout") {
            return Err(config_err(format!(
                "{name}/function.json bindings[{i}].direction must be in/out/inout, found '{direction}'"
            )));
        }
        if kind.eq_ignore_ascii_case("httpTrigger") {
            if http_trigger.is_some() {
                return Err(config_err(format!(
                    "{name}/function.json has more than one httpTrigger"
                )));
            }
            let methods = match b.get_ci("methods") {
                None | Some(Json::Null) => None,
                Some(Json::Array(items)) => {
                    let mut methods = Vec::new();
                    for m in items {
                        let m = m.as_str().ok_or_else(|| {
                            config_err(format!("{name}/function.json: methods must be strings"))
                        })?;
                        methods.push(m.to_ascii_uppercase());
                    }
                    Some(methods).filter(|m: &Vec<String>| !m.is_empty())
                }
                Some(_) => {
                    return Err(config_err(format!(
                        "{name}/function.json: methods must be an array"
                    )));
                }
            };
            let route = Some(field("route")?)
                .map(|r| r.trim_matches('/').to_string())
                .filter(|r| !r.is_empty());
            let auth_level = Some(field("authLevel")?.to_ascii_lowercase())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "function".to_string());
            let template_text = route.clone().unwrap_or_else(|| name.to_string());
            let template = RouteTemplate::parse(&template_text).map_err(|e| {
                config_err(format!("{name}/function.json route '{template_text}': {e}"))
            })?;
            http_trigger = Some(HttpTriggerSpec {
                name: binding_name.clone(),
                methods,
                route,
                auth_level,
                template,
            });
        } else if kind.eq_ignore_ascii_case("http") && direction != "in" {
            http_output = Some(binding_name.clone());
        }
        bindings.push(BindingSpec {
            kind,
            direction,
            name: binding_name,
        });
    }
    Ok(FunctionSpec {
        name: name.to_string(),
        bindings,
        http_trigger,
        http_output,
    })
}

/// Loads every `<dir>/function.json` directly below `app_root`, sorted by function name.
/// A `function.json` with `"disabled": true` is skipped.
pub fn load_functions(app_root: &Path) -> Result<Vec<FunctionSpec>, EmulatorError> {
    let entries = std::fs::read_dir(app_root).map_err(|source| EmulatorError::Io {
        context: format!("reading app root {}", app_root.display()),
        source,
    })?;
    let mut functions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| EmulatorError::Io {
            context: format!("reading app root {}", app_root.display()),
            source,
        })?;
        let path = entry.path().join("function.json");
        if !path.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).map_err(|source| EmulatorError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?;
        let disabled = Json::parse(text.as_bytes())
            .ok()
            .and_then(|j| j.get_ci("disabled").cloned())
            .is_some_and(|d| d == Json::Bool(true) || d.as_str() == Some("true"));
        if disabled {
            log(&format!("function '{name}' is disabled; skipped"));
            continue;
        }
        functions.push(parse_function_json(&name, &text)?);
    }
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(functions)
}
