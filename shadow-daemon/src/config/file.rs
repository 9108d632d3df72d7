//! The TOML config file: `interface`, `[defaults]` and `[[rule]]` tables. The file's keys are the
//! settings of [`RuleArgs`] and [`ControlArgs`], deserialized by serde through the same parsers
//! as the flags; each key is first read alone, so that an error names the file and the field.
//! Some keys exist only in a `[[rule]]`, because only a file has several rules: the settings of
//! [`FileRuleArgs`] (`name`, `match`, `sample_rate`). What is checked across rules (unique names,
//! no service in two rules) is checked here.

use serde::de::DeserializeOwned;

use super::{
    Rule, UsageError,
    settings::{ControlArgs, EgressArgs, FileRule, FileRuleArgs, RampArgs, RuleArgs},
};
use crate::{compare::CompareSettings, replay::controls::ReplayControls};

/// What a config file says. A rule whose `sample_rate` is not set has `sample_ppm` None: the
/// daemon's `--sample-rate` applies.
#[derive(Debug)]
pub(super) struct FileConfig {
    pub interface: Option<String>,
    pub rules: Vec<Rule>,
    /// Each rule's own `sample_rate`, index-aligned with `rules`.
    pub rates: Vec<Option<u32>>,
}

/// Parse a config file's text; `name` is how errors refer to the file.
pub(super) fn parse_config(name: &str, text: &str) -> Result<FileConfig, UsageError> {
    let fail = |field: &str, msg: String| UsageError(format!("config {name}: {field}: {msg}"));
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map(|s| {
            let before = &text[..s.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |p| p + 1) + 1;
            format!("line {line}, column {col}: ")
        });
        UsageError(format!("config {name}: {}{}", at.unwrap_or_default(), e.message().trim().replace('\n', " ")))
    })?;

    let mut interface = None;
    let mut defaults = ReplayControls::default();
    // `[defaults.compare]`: the comparison of rules that do not set their own.
    let mut default_compare: Option<Option<CompareSettings>> = None;
    let mut rule_values: Option<&Vec<toml::Value>> = None;
    // [defaults] first, whatever its place in the file, since rules start from it.
    if let Some(v) = table.get("defaults") {
        let t = v.as_table().ok_or_else(|| fail("defaults", format!("expected a table, found {}", v.type_str())))?;
        let field = |k: &str| format!("defaults.{k}");
        let mut t = t.clone();
        if let Some(c) = t.remove("compare") {
            default_compare = Some(compare_settings(&c, "defaults").map_err(|(f, m)| fail(&f, m))?);
        }
        let t = &t;
        if let Some(k) = t.keys().find(|k| !ControlArgs::KEYS.contains(&k.as_str())) {
            let in_rule = RuleArgs::KEYS.contains(&k.as_str()) || FileRuleArgs::KEYS.contains(&k.as_str());
            let hint = if in_rule { " (it belongs in a [[rule]])" } else { "" };
            return Err(fail(&field(k), format!("unknown key{hint}")));
        }
        let controls: ControlArgs = read(t, &field, &fail)?;
        controls.apply(&mut defaults, &|k| format!("config {name}: {}", field(k)))?;
    }
    for (k, v) in &table {
        match k.as_str() {
            "defaults" => {}
            "interface" => {
                let i = v
                    .as_str()
                    .filter(|i| !i.trim().is_empty())
                    .ok_or_else(|| fail("interface", "expected an interface name".into()))?;
                interface = Some(i.trim().to_owned());
            }
            "rule" => {
                rule_values = Some(v.as_array().ok_or_else(|| fail("rule", "expected [[rule]] tables".into()))?);
            }
            _ => return Err(fail(k, "unknown key (expected interface, [defaults] or [[rule]])".into())),
        }
    }
    let rule_values =
        rule_values.filter(|r| !r.is_empty()).ok_or_else(|| fail("rule", "no [[rule]]: add at least one".into()))?;

    let mut rules: Vec<Rule> = Vec::with_capacity(rule_values.len());
    let mut rates: Vec<Option<u32>> = Vec::with_capacity(rule_values.len());
    for (i, rv) in rule_values.iter().enumerate() {
        let field = |k: &str| format!("rule[{i}].{k}");
        let (rule, sample_ppm) = parse_rule(i, rv, &defaults, default_compare.as_ref(), name)?;
        if let Some(j) = rules.iter().position(|r| r.name == rule.name) {
            return Err(fail(&field("name"), format!("'{}' is already the name of rule[{j}]", rule.name)));
        }
        for s in rule.services() {
            if let Some(j) = rules.iter().position(|r| r.services().contains(&s)) {
                let (key, what) = match s.net {
                    None => ("port", format!("port {}", s.port)),
                    Some(_) => ("match", s.to_string()),
                };
                return Err(fail(&field(key), format!("{what} is already in rule[{j}]")));
            }
        }
        rules.push(rule);
        rates.push(sample_ppm);
    }
    Ok(FileConfig { interface, rules, rates })
}

/// Rule `i` of the file (`rv`, a `[[rule]]` table), on top of the file's `[defaults]`; its own
/// sample rate, if it sets one.
fn parse_rule(
    i: usize,
    rv: &toml::Value,
    defaults: &ReplayControls,
    default_compare: Option<&Option<CompareSettings>>,
    name: &str,
) -> Result<(Rule, Option<u32>), UsageError> {
    let fail = |field: &str, msg: String| UsageError(format!("config {name}: {field}: {msg}"));
    let field = |k: &str| format!("rule[{i}].{k}");
    let t = rv.as_table().ok_or_else(|| fail(&format!("rule[{i}]"), "expected a table".into()))?;
    let (mut matching, mut file_only, mut controls) = (toml::Table::new(), toml::Table::new(), toml::Table::new());
    let mut compare = None;
    let mut egress = None;
    let mut ramp = None;
    for (k, v) in t {
        if k == "ramp" {
            let rfield = |rk: &str| format!("rule[{i}].ramp.{rk}");
            let args: RampArgs = sub_table(v, "ramp", RampArgs::KEYS, &field(k), &rfield, &fail)?;
            ramp = args.into_ramp(&|rk| format!("config {name}: {}", rfield(rk)))?;
            if ramp.is_none() {
                return Err(fail(
                    &rfield("steps"),
                    "missing: a ramp needs its steps (percent, e.g. 1,5,10,25,50,100)".into(),
                ));
            }
            continue;
        }
        if k == "compare" {
            compare = Some(compare_settings(v, &format!("rule[{i}]")).map_err(|(f, m)| fail(&f, m))?);
            continue;
        }
        if k == "egress" {
            let efield = |ek: &str| format!("rule[{i}].egress.{ek}");
            let args: EgressArgs = sub_table(v, "egress", EgressArgs::KEYS, &field(k), &efield, &fail)?;
            let cfg = args.into_fence(&|ek| format!("config {name}: {}", efield(ek)))?.ok_or_else(|| {
                fail(&efield("cgroups"), "missing: an egress fence needs the shadow's cgroup(s)".into())
            })?;
            egress = Some(cfg);
            continue;
        }
        let part = if RuleArgs::KEYS.contains(&k.as_str()) {
            &mut matching
        } else if FileRuleArgs::KEYS.contains(&k.as_str()) {
            &mut file_only
        } else if ControlArgs::KEYS.contains(&k.as_str()) {
            &mut controls
        } else {
            return Err(fail(&field(k), format!("unknown key (known: {})", known_rule_keys())));
        };
        part.insert(k.clone(), v.clone());
    }
    let matching: RuleArgs = read(&matching, &field, &fail)?;
    let file_only: FileRuleArgs = read(&file_only, &field, &fail)?;
    let controls: ControlArgs = read(&controls, &field, &fail)?;
    let setting = |k: &str| format!("config {name}: {}", field(k));
    let mut own = defaults.clone();
    controls.apply(&mut own, &setting)?;
    let mut rule = matching.into_rule(own, &setting)?;
    rule.name = format!("rule{i}");
    let mut file_rule = FileRule { rule, sample_ppm: None };
    file_only.apply(&mut file_rule, &setting)?;
    let FileRule { mut rule, sample_ppm } = file_rule;
    rule.egress = egress;
    rule.ramp = ramp;
    // A rule without a shadow has nothing to compare, whatever it says.
    if rule.shadow.is_some()
        && let Some(c) = compare.or_else(|| default_compare.cloned())
    {
        rule.compare = c;
    }
    if rule.ramp.is_some() && rule.compare.is_none() {
        return Err(fail(
            &format!("rule[{i}].ramp"),
            "a ramp judges compared pairs: the rule needs a shadow and comparison (on unless compare = false)".into(),
        ));
    }
    if rule.services().is_empty() {
        return Err(fail(&field("port"), "missing: every rule needs its service port(s) or a match".into()));
    }
    Ok((rule, sample_ppm))
}

/// A `compare` value at `at` (`rule[0]`, `defaults`): `false` turns comparison off, `true` is the
/// default settings, a table is [`CompareSettings`]. Errors as (field, message), the field named
/// as `rule[0].compare.gates.min_samples` when known.
fn compare_settings(v: &toml::Value, at: &str) -> Result<Option<CompareSettings>, (String, String)> {
    use serde::Deserialize as _;
    let t = match v {
        toml::Value::Boolean(false) => return Ok(None),
        toml::Value::Boolean(true) => return Ok(Some(CompareSettings::default())),
        toml::Value::Table(t) => t,
        other => {
            return Err((
                format!("{at}.compare"),
                format!("expected a [compare] table, true or false, found {}", other.type_str()),
            ));
        }
    };
    for (k, v) in t {
        let alone: toml::Table = [(k.clone(), v.clone())].into_iter().collect();
        CompareSettings::deserialize(toml::Value::Table(alone))
            .map_err(|e| (format!("{at}.compare.{k}"), e.message().trim().replace('\n', " ")))?;
    }
    let s = CompareSettings::deserialize(toml::Value::Table(t.clone()))
        .map_err(|e| (format!("{at}.compare"), e.message().trim().replace('\n', " ")))?;
    // validate() names the field from `compare.` on.
    s.validate()
        .map_err(|crate::compare::CompareError::InvalidSetting { field, reason }| (format!("{at}.{field}"), reason))?;
    Ok(Some(s))
}

/// Settings from a table of their keys: each key alone first, so that a type or value error
/// names its field, then the whole table.
/// A rule's `[rule.NAME]` table (`egress`, `ramp`) read as `S`: a table of known keys only, each
/// error naming its field.
fn sub_table<S: DeserializeOwned>(
    v: &toml::Value,
    name: &str,
    keys: &[&str],
    at: &str,
    field: &dyn Fn(&str) -> String,
    fail: &dyn Fn(&str, String) -> UsageError,
) -> Result<S, UsageError> {
    let t = v.as_table().ok_or_else(|| fail(at, format!("expected a [rule.{name}] table, found {}", v.type_str())))?;
    if let Some(k) = t.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(fail(&field(k), format!("unknown key (known: {})", keys.join(", "))));
    }
    read(t, field, fail)
}

fn read<S: DeserializeOwned>(
    t: &toml::Table,
    field: &dyn Fn(&str) -> String,
    fail: &dyn Fn(&str, String) -> UsageError,
) -> Result<S, UsageError> {
    for (k, v) in t {
        let alone: toml::Table = [(k.clone(), v.clone())].into_iter().collect();
        S::deserialize(toml::Value::Table(alone)).map_err(|e| fail(&field(k), e.message().to_owned()))?;
    }
    S::deserialize(toml::Value::Table(t.clone())).map_err(|e| fail(&field("?"), e.message().to_owned()))
}

fn known_rule_keys() -> String {
    let mut k: Vec<&str> = FileRuleArgs::KEYS
        .iter()
        .chain(RuleArgs::KEYS)
        .chain(ControlArgs::KEYS)
        .chain(&["compare", "egress", "ramp"])
        .copied()
        .collect();
    k.sort_unstable();
    k.join(", ")
}
