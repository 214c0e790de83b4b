//! Route templates and the route table (§8): which function a client path reaches.

use crate::functions::FunctionSpec;
use axum::http::Method;

#[derive(Clone, Debug)]
enum Segment {
    Literal(String),
    Param {
        name: String,
        optional: bool,
        default: Option<String>,
        constraints: Vec<String>,
        catch_all: bool,
    },
}

/// An ASP.NET-style route template (`products/{id:int?}`, `{*path}`): literal segments,
/// whole-segment parameters with optional `?`, `=default`, `:constraint`s, and a final
/// catch-all. Literals match case-insensitively. Constraints checked: `int`, `long`, `bool`,
/// `guid`, `alpha`, `double`/`float`/`decimal`, `min(n)`, `max(n)`, `range(a,b)`,
/// `minlength(n)`, `maxlength(n)`, `length(n)`; others (e.g. `regex`, `datetime`) accept
/// anything. Segments mixing literals and parameters are rejected at load time.
#[derive(Clone, Debug)]
pub struct RouteTemplate {
    segments: Vec<Segment>,
}

impl RouteTemplate {
    /// Parses a template (no leading `/`).
    pub fn parse(text: &str) -> Result<RouteTemplate, String> {
        let mut segments = Vec::new();
        let text = text.trim_matches('/');
        if text.is_empty() {
            return Ok(RouteTemplate { segments });
        }
        let parts: Vec<&str> = text.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err("empty segment".to_string());
            }
            if part.starts_with('{') && part.ends_with('}') && part.len() >= 2 {
                let mut inner = &part[1..part.len() - 1];
                let catch_all = inner.starts_with('*');
                inner = inner.trim_start_matches('*');
                let (head, default) = match inner.split_once('=') {
                    Some((h, d)) => (h, Some(d.to_string())),
                    None => (inner, None),
                };
                let optional = head.ends_with('?');
                let head = head.trim_end_matches('?');
                let mut pieces = split_constraints(head);
                let name = pieces.remove(0);
                if name.is_empty() {
                    return Err(format!("parameter without a name in '{part}'"));
                }
                if catch_all && i + 1 != parts.len() {
                    return Err("a catch-all parameter must be the last segment".to_string());
                }
                segments.push(Segment::Param {
                    name,
                    optional: optional || catch_all,
                    default,
                    constraints: pieces,
                    catch_all,
                });
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "segment '{part}' mixes literals and parameters (not supported by the emulator)"
                ));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(RouteTemplate { segments })
    }

    fn literal_count(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Matches already-split raw path segments; returns route values in template order
    /// (percent-decoded; `None` = unused optional parameter without default → JSON `null`).
    pub fn match_segments(&self, path: &[&str]) -> Option<RouteValues> {
        let mut values = Vec::new();
        let mut pos = 0;
        for seg in &self.segments {
            match seg {
                Segment::Literal(lit) => {
                    let actual = path.get(pos)?;
                    if !percent_decode(actual).eq_ignore_ascii_case(lit) {
                        return None;
                    }
                    pos += 1;
                }
                Segment::Param {
                    name,
                    optional,
                    default,
                    constraints,
                    catch_all,
                } => {
                    let raw = if *catch_all {
                        let rest = path.get(pos..).unwrap_or_default().join("/");
                        pos = path.len();
                        Some(rest).filter(|r| !r.is_empty())
                    } else {
                        let v = path.get(pos).map(|s| s.to_string());
                        if v.is_some() {
                            pos += 1;
                        }
                        v
                    };
                    match raw {
                        Some(raw) => {
                            let value = percent_decode(&raw);
                            if !constraints.iter().all(|c| constraint_ok(c, &value)) {
                                return None;
                            }
                            values.push((name.clone(), Some(value)));
                        }
                        None if *optional || default.is_some() => {
                            values.push((name.clone(), default.clone()));
                        }
                        None => return None,
                    }
                }
            }
        }
        if pos != path.len() {
            return None;
        }
        Some(values)
    }
}

fn split_constraints(head: &str) -> Vec<String> {
    // Split on ':' outside parentheses: "id:int:range(1,5)" → ["id", "int", "range(1,5)"].
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for ch in head.chars() {
        match ch {
            '(' => {
                depth += 1;
                current.push(ch);
            }
            ')' => {
                depth = depth.saturating_sub(1);
                current.push(ch);
            }
            ':' if depth == 0 => out.push(std::mem::take(&mut current)),
            _ => current.push(ch),
        }
    }
    out.push(current);
    out
}

fn constraint_ok(constraint: &str, value: &str) -> bool {
    let lower = constraint.to_ascii_lowercase();
    let (name, arg) = match lower.split_once('(') {
        Some((n, a)) => (n.to_string(), Some(a.trim_end_matches(')').to_string())),
        None => (lower.clone(), None),
    };
    let num = |s: &str| s.trim().parse::<f64>().ok();
    match (name.as_str(), arg) {
        ("int", _) => value.parse::<i32>().is_ok(),
        ("long", _) => value.parse::<i64>().is_ok(),
        ("bool", _) => value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false"),
        ("guid", _) => uuid::Uuid::parse_str(value).is_ok(),
        ("alpha", _) => !value.is_empty() && value.chars().all(|c| c.is_ascii_alphabetic()),
        ("double" | "float" | "decimal", _) => value.parse::<f64>().is_ok(),
        ("min", Some(a)) => {
            matches!((value.parse::<i64>(), num(&a)), (Ok(v), Some(m)) if v as f64 >= m)
        }
        ("max", Some(a)) => {
            matches!((value.parse::<i64>(), num(&a)), (Ok(v), Some(m)) if v as f64 <= m)
        }
        ("range", Some(a)) => {
            let mut it = a.split(',');
            match (
                value.parse::<i64>(),
                it.next().and_then(num),
                it.next().and_then(num),
            ) {
                (Ok(v), Some(lo), Some(hi)) => (v as f64) >= lo && (v as f64) <= hi,
                _ => false,
            }
        }
        ("minlength", Some(a)) => num(&a).is_some_and(|m| value.chars().count() as f64 >= m),
        ("maxlength", Some(a)) => num(&a).is_some_and(|m| value.chars().count() as f64 <= m),
        ("length", Some(a)) => {
            let bounds: Vec<f64> = a.split(',').filter_map(num).collect();
            let len = value.chars().count() as f64;
            match bounds.as_slice() {
                [n] => len == *n,
                [lo, hi] => len >= *lo && len <= *hi,
                _ => true,
            }
        }
        _ => true,
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Route values in template order: `(name, value)`, value `None` = unused optional (`null`).
pub type RouteValues = Vec<(String, Option<String>)>;

/// Routing table: `/{routePrefix}/{route or name}` → function (§8).
#[derive(Clone, Debug)]
pub struct RouteTable {
    entries: Vec<(usize, RouteTemplate)>,
}

impl RouteTable {
    /// Builds the table; functions without an HTTP trigger are not routable. Templates with more
    /// literal segments are tried first (roughly ASP.NET's route precedence).
    pub fn new(functions: &[FunctionSpec], route_prefix: &str) -> RouteTable {
        let prefix: Vec<Segment> = route_prefix
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| Segment::Literal(s.to_string()))
            .collect();
        let mut entries: Vec<(usize, RouteTemplate)> = functions
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let trigger = f.http_trigger.as_ref()?;
                let mut segments = prefix.clone();
                segments.extend(trigger.template.segments.iter().cloned());
                Some((i, RouteTemplate { segments }))
            })
            .collect();
        entries.sort_by_key(|(i, t)| (std::cmp::Reverse(t.literal_count()), *i));
        RouteTable { entries }
    }

    /// Finds the function for `method` + raw `path`. A path that matches a route whose
    /// `methods` exclude `method` does not match (the host's router then answers 404, not 405).
    pub fn find(
        &self,
        functions: &[FunctionSpec],
        method: &Method,
        path: &str,
    ) -> Option<(usize, RouteValues)> {
        let trimmed = path.trim_start_matches('/');
        let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let segments: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        for (index, template) in &self.entries {
            let Some(trigger) = functions.get(*index).and_then(|f| f.http_trigger.as_ref()) else {
                continue;
            };
            let method_ok = trigger
                .methods
                .as_ref()
                .is_none_or(|m| m.iter().any(|m| m == method.as_str()));
            if !method_ok {
                continue;
            }
            if let Some(values) = template.match_segments(&segments) {
                return Some((*index, values));
            }
        }
        None
    }
}
