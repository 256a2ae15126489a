//! Personalization templates: text with `{variable}` placeholders, filled per machine from
//! its variables (`{name}`, `{mac}`, `{ip}`, `{group}` and the ones an admin set on its group
//! and on the machine, the machine's winning). `{{` and `}}` stand for literal braces.
//!
//! Pure string work, no I/O: the server fills templates for each machine when it hands the
//! task out, and checks them against every target machine when a deployment is created.

use std::collections::BTreeMap;

/// Variables by name.
pub type Vars = BTreeMap<String, String>;

/// The variables every machine has, set by drover: they cannot be set by hand.
pub const BUILTIN: [&str; 4] = ["name", "mac", "ip", "group"];

/// Why a template cannot be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// It names a variable the machine does not have.
    #[error("{{{0}}}: no such variable")]
    Unknown(String),
    /// A `{` without its `}`, a `}` without its `{`, or an empty or malformed name.
    #[error("{0}")]
    Malformed(String),
}

/// Whether `name` may be a variable's name: 1 to 64 of letters, digits and `_ . - : /` (the
/// `unattend:` variables name an answer-file setting by its component and element).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-:/".contains(c))
}

/// Checks a variable an admin sets: a valid name, not a built-in one, a value without NUL.
pub fn check_var(name: &str, value: &str) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "variable {name:?}: 1 to 64 letters, digits, '_', '.', '-', ':' or '/'"
        ));
    }
    if BUILTIN.contains(&name) {
        return Err(format!(
            "variable {name:?} is set by drover for every machine and cannot be set by hand"
        ));
    }
    if value.contains('\0') || value.len() > 4096 {
        return Err(format!(
            "variable {name:?}: a value of at most 4096 bytes, without NUL"
        ));
    }
    Ok(())
}

/// The pieces of a template, in order.
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(t: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = t;
    while !rest.is_empty() {
        let Some(at) = rest.find(['{', '}']) else {
            out.push(Piece::Text(rest));
            break;
        };
        if at > 0 {
            out.push(Piece::Text(&rest[..at]));
        }
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push(Piece::Text("{"));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push(Piece::Text("}"));
            rest = after;
        } else if tail.starts_with('}') {
            return Err(TemplateError::Malformed(format!(
                "a '}}' without its '{{' at byte {} (write }}}} for a brace)",
                t.len() - tail.len()
            )));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(TemplateError::Malformed(format!(
                    "a '{{' without its '}}' at byte {} (write {{{{ for a brace)",
                    t.len() - tail.len()
                )));
            };
            let name = &tail[1..end];
            if !valid_name(name) {
                return Err(TemplateError::Malformed(format!(
                    "{{{name}}}: not a variable name (letters, digits, '_', '.', '-', ':', '/')"
                )));
            }
            out.push(Piece::Var(name));
            rest = &tail[end + 1..];
        }
    }
    Ok(out)
}

/// The variables a template names, each once, in order of appearance.
pub fn names(t: &str) -> Result<Vec<String>, TemplateError> {
    let mut v: Vec<String> = Vec::new();
    for p in pieces(t)? {
        if let Piece::Var(n) = p {
            if !v.iter().any(|x| x == n) {
                v.push(n.to_string());
            }
        }
    }
    Ok(v)
}

/// Fills the template from `vars`.
pub fn render(t: &str, vars: &Vars) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(t.len());
    for p in pieces(t)? {
        match p {
            Piece::Text(s) => out.push_str(s),
            Piece::Var(n) => out.push_str(
                vars.get(n)
                    .ok_or_else(|| TemplateError::Unknown(n.to_string()))?,
            ),
        }
    }
    Ok(out)
}

/// A machine's variables: its group's, then its own (which win), then the built-in ones.
pub fn machine_vars(
    name: &str,
    mac: &str,
    ip: Option<&str>,
    group: Option<&str>,
    group_vars: &Vars,
    own: &Vars,
) -> Vars {
    let mut v = group_vars.clone();
    v.extend(own.iter().map(|(k, x)| (k.clone(), x.clone())));
    v.insert("name".into(), name.into());
    v.insert(
        "mac".into(),
        mac.replace([':', '-'], "").to_ascii_lowercase(),
    );
    v.insert("ip".into(), ip.unwrap_or_default().into());
    v.insert("group".into(), group.unwrap_or_default().into());
    v
}

/// A hostname from any text: lower case, each run of characters a hostname cannot hold
/// turned into one `-`, no `-` at either end of a label, at most 63 bytes a label and 253 in
/// all. `None` when nothing is left.
pub fn hostname(text: &str) -> Option<String> {
    let mut labels = Vec::new();
    for label in text.to_ascii_lowercase().split('.') {
        let mut l = String::new();
        for c in label.chars() {
            if c.is_ascii_alphanumeric() {
                l.push(c);
            } else if !l.ends_with('-') {
                l.push('-');
            }
        }
        let l = l.trim_matches('-');
        let l = &l[..l.len().min(63)];
        let l = l.trim_end_matches('-');
        if !l.is_empty() {
            labels.push(l.to_string());
        }
    }
    let mut h = labels.join(".");
    if h.len() > 253 {
        h.truncate(253);
        h = h.trim_end_matches(['-', '.']).to_string();
    }
    (!h.is_empty()).then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> Vars {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_variables_and_keeps_escaped_braces() {
        let v = vars(&[("name", "pc-07"), ("room", "B12")]);
        assert_eq!(render("{room}-{name}", &v).unwrap(), "B12-pc-07");
        assert_eq!(
            render("{{\"host\": \"{name}\"}}", &v).unwrap(),
            "{\"host\": \"pc-07\"}"
        );
        assert_eq!(render("no placeholders", &v).unwrap(), "no placeholders");
        assert_eq!(names("{a}{b}{a}{{c}}").unwrap(), ["a", "b"]);
    }

    #[test]
    fn names_the_unknown_variable_and_the_malformed_spot() {
        let v = vars(&[("name", "x")]);
        assert_eq!(
            render("{name}-{seat}", &v),
            Err(TemplateError::Unknown("seat".into()))
        );
        for (t, says) in [
            ("{name", "without its '}'"),
            ("name}", "without its '{'"),
            ("{}", "not a variable name"),
            ("{a b}", "not a variable name"),
        ] {
            match render(t, &v) {
                Err(TemplateError::Malformed(m)) => assert!(m.contains(says), "{t}: {m}"),
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_machine_wins_over_its_group_and_builtins_win_over_both() {
        let group = vars(&[("room", "B12"), ("os", "debian")]);
        let own = vars(&[("room", "B14"), ("seat", "3")]);
        let v = machine_vars(
            "pc-07",
            "AA:BB:CC:00:11:22",
            Some("10.0.0.7"),
            Some("lab"),
            &group,
            &own,
        );
        assert_eq!(v["room"], "B14");
        assert_eq!(v["os"], "debian");
        assert_eq!(v["seat"], "3");
        assert_eq!(v["mac"], "aabbcc001122");
        assert_eq!(v["ip"], "10.0.0.7");
        assert_eq!(v["group"], "lab");
        let none = machine_vars(
            "n",
            "aa:bb:cc:00:11:22",
            None,
            None,
            &Vars::new(),
            &Vars::new(),
        );
        assert_eq!((none["ip"].as_str(), none["group"].as_str()), ("", ""));
    }

    #[test]
    fn variables_set_by_hand_are_checked() {
        assert!(check_var("room", "B12").is_ok());
        assert!(check_var("unattend:Microsoft-Windows-Shell-Setup/TimeZone", "UTC").is_ok());
        assert!(check_var("name", "x")
            .unwrap_err()
            .contains("set by drover"));
        assert!(check_var("a b", "x").is_err());
        assert!(check_var("", "x").is_err());
        assert!(check_var("k", "a\0b").is_err());
    }

    #[test]
    fn hostnames_are_made_valid() {
        assert_eq!(hostname("PC 07").as_deref(), Some("pc-07"));
        assert_eq!(
            hostname("aa:bb:cc:00:11:22").as_deref(),
            Some("aa-bb-cc-00-11-22")
        );
        assert_eq!(
            hostname("lab.example.org").as_deref(),
            Some("lab.example.org")
        );
        assert_eq!(hostname("--x--").as_deref(), Some("x"));
        assert_eq!(hostname("Salle_B12__pc3").as_deref(), Some("salle-b12-pc3"));
        assert_eq!(hostname("!!!"), None);
        assert_eq!(hostname(&"a".repeat(100)).unwrap().len(), 63);
    }
}
