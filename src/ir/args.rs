//! Evaluated layer arguments, and the typed readers each op uses to take its attributes.
//! Every read records the key, so unknown keys get a "did you mean" from the keys the op knows.

use crate::diag::{suggest, Diagnostic, Result};
use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A quoted string.
    Str(String),
    /// A bare word that named no parameter: `relu`, `same`, ...
    Sym(String),
    List(Vec<Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::Sym(_) => "a name",
            Value::List(_) => "a list",
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => format!("\"{s}\""),
            Value::Sym(s) => s.clone(),
            Value::List(v) => format!(
                "[{}]",
                v.iter()
                    .map(|x| x.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ArgVal {
    pub key: Option<(String, Span)>,
    pub value: Value,
    pub span: Span,
    /// Names in scope when the value was evaluated, for "did you mean" on unknown words.
    pub scope_names: Vec<String>,
}

/// The arguments of one layer, read by its op.
pub struct Args {
    pub op: String,
    pub span: Span,
    vals: Vec<ArgVal>,
    used: Vec<bool>,
    /// The spec's `defaults` for this kind: read when the layer itself does not give the key.
    defaults: Vec<ArgVal>,
    known: Vec<&'static str>,
    positional: Vec<&'static str>,
    /// Schema mode (`Args::recorder`): every typed read is noted with its type and range, for
    /// `se-compile schema`, which so describes exactly what the readers accept.
    record: Option<Vec<(&'static str, KeyType)>>,
}

/// What a parser read in schema mode: every key with its type, the keys positional values
/// fill, and the keys it cannot do without.
pub struct RecordedKeys {
    pub keys: Vec<(&'static str, KeyType)>,
    pub positional: Vec<&'static str>,
    pub required: Vec<&'static str>,
}

/// What a typed reader accepts, as noted in schema mode.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyType {
    Int {
        min: i64,
    },
    Float {
        lo: f64,
        hi: f64,
    },
    Bool,
    Word(Vec<String>),
    /// An integer or `[a, b]`.
    Pair {
        min: i64,
    },
    /// Several forms (padding, shapes, lists): read raw.
    Any,
}

impl KeyType {
    /// A value of this type, for a schema-mode read of a required key.
    fn sample(&self) -> Value {
        match self {
            KeyType::Int { min } | KeyType::Pair { min } => Value::Int((*min).max(1)),
            KeyType::Float { lo, .. } => Value::Float(*lo),
            KeyType::Bool => Value::Bool(false),
            KeyType::Word(w) => Value::Sym(w.first().cloned().unwrap_or_default()),
            KeyType::Any => Value::List(vec![Value::Int(1)]),
        }
    }
}

/// Largest size of any one dimension, filter count or kernel: far beyond any real CNN, small
/// enough that products of a few of them cannot overflow 64 bits.
pub const MAX_DIM: i64 = 1 << 20;

impl Args {
    pub fn new(op: impl Into<String>, span: Span, vals: Vec<ArgVal>) -> Self {
        let n = vals.len();
        Args {
            op: op.into(),
            span,
            vals,
            used: vec![false; n],
            defaults: vec![],
            known: vec![],
            positional: vec![],
            record: None,
        }
    }

    /// Schema mode: runs `read` (an op's parser) on arguments that start empty, giving each
    /// required key a sample value of its type until the parse succeeds, and returns every key
    /// it read with its type, plus the positional keys. Keys read only under conditions that
    /// the samples do not meet are not seen; none of the parsers has such keys.
    pub fn record_keys<T>(op: &str, read: impl Fn(&mut Args) -> Result<T>) -> RecordedKeys {
        let mut given: Vec<ArgVal> = vec![];
        loop {
            let mut a = Args::new(op, Span::new(0, 0), given.clone());
            a.record = Some(vec![]);
            let ok = read(&mut a).is_ok();
            let rec = a.record.take().unwrap_or_default();
            let missing = rec.iter().find(|(k, _)| {
                !given
                    .iter()
                    .any(|g| g.key.as_ref().is_some_and(|(gk, _)| gk == k))
            });
            match missing {
                Some((k, t)) if !ok && given.len() < 16 => given.push(ArgVal {
                    key: Some((k.to_string(), Span::new(0, 0))),
                    value: t.sample(),
                    span: Span::new(0, 0),
                    scope_names: vec![],
                }),
                _ => {
                    let required = given
                        .iter()
                        .filter_map(|g| g.key.as_ref())
                        .filter_map(|(k, _)| rec.iter().find(|(r, _)| r == k).map(|(r, _)| *r))
                        .collect();
                    return RecordedKeys {
                        keys: rec,
                        positional: a.positional.clone(),
                        required,
                    };
                }
            }
        }
    }

    fn note(&mut self, key: &'static str, t: KeyType) {
        if let Some(r) = &mut self.record {
            match r.iter_mut().find(|(k, _)| *k == key) {
                // `get` then a typed read of the same key: keep the type.
                Some(e) if e.1 == KeyType::Any => e.1 = t,
                Some(_) => {}
                None => r.push((key, t)),
            }
        }
    }

    pub fn with_defaults(mut self, defaults: Vec<ArgVal>) -> Self {
        self.defaults = defaults;
        self
    }

    /// Declares which keys positional arguments fill, in order.
    pub fn positional(&mut self, keys: &[&'static str]) -> Result<()> {
        self.positional = keys.to_vec();
        // `zero_padding2d: [1, 2]` / `reshape(1, 1, 256)`: several values for a kind that takes
        // one positional argument are that argument's list.
        let pos: Vec<usize> = (0..self.vals.len())
            .filter(|&i| self.vals[i].key.is_none())
            .collect();
        if keys.len() == 1 && pos.len() > 1 {
            let items: Vec<Value> = pos.iter().map(|&i| self.vals[i].value.clone()).collect();
            let span = self.vals[pos[0]]
                .span
                .join(self.vals[pos[pos.len() - 1]].span);
            let first = pos[0];
            self.vals[first].value = Value::List(items);
            self.vals[first].span = span;
            for &i in pos[1..].iter().rev() {
                self.vals.remove(i);
                self.used.remove(i);
            }
        }
        let mut idx = 0;
        for v in &self.vals {
            if v.key.is_none() {
                if idx >= keys.len() {
                    let msg = if keys.is_empty() {
                        format!("`{}` takes no positional arguments", self.op)
                    } else {
                        format!(
                            "`{}` takes at most {} positional argument(s): {}",
                            self.op,
                            keys.len(),
                            keys.join(", ")
                        )
                    };
                    return Err(Diagnostic::new("spec::arity", msg)
                        .at(v.span, "extra argument")
                        .help("name the argument, e.g. `key = value`, or remove it"));
                }
                idx += 1;
            }
        }
        Ok(())
    }

    fn find(&mut self, key: &'static str) -> Option<usize> {
        if let Some(i) = self.find_own(key) {
            return Some(i);
        }
        let d = self
            .defaults
            .iter()
            .position(|d| d.key.as_ref().is_some_and(|(k, _)| k == key))?;
        // Defaults are appended so that every read goes through one vector of values.
        self.vals.push(self.defaults[d].clone());
        self.used.push(true);
        Some(self.vals.len() - 1)
    }

    fn find_own(&mut self, key: &'static str) -> Option<usize> {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
        let pos = self.positional.iter().position(|k| *k == key);
        let mut found = None;
        let mut pidx = 0;
        for (i, v) in self.vals.iter().enumerate() {
            match &v.key {
                // The first named occurrence wins; `finish` reports a repeated key.
                Some((k, _)) if k == key && found.is_none() => found = Some(i),
                None => {
                    if Some(pidx) == pos {
                        found = Some(i);
                    }
                    pidx += 1;
                }
                _ => {}
            }
        }
        if let Some(i) = found {
            self.used[i] = true;
        }
        found
    }

    /// A value with its span, if given.
    pub fn get(&mut self, key: &'static str) -> Option<(Value, Span)> {
        self.note(key, KeyType::Any);
        self.find(key)
            .map(|i| (self.vals[i].value.clone(), self.vals[i].span))
    }

    fn type_err(
        &self,
        key: &str,
        v: &Value,
        span: Span,
        want: &str,
        i: Option<usize>,
    ) -> Diagnostic {
        let mut d = Diagnostic::new(
            "spec::type",
            format!(
                "`{}` of `{}` must be {want}, found {} `{}`",
                key,
                self.op,
                v.type_name(),
                v.describe()
            ),
        )
        .at(span, format!("expected {want}"));
        if let (Value::Sym(s), Some(i)) = (v, i) {
            let names: Vec<&str> = self.vals[i]
                .scope_names
                .iter()
                .map(|s| s.as_str())
                .collect();
            d = match crate::diag::did_you_mean(s, names.iter().copied()) {
                Some(c) => d.help(format!(
                    "`{s}` is not a parameter in scope; did you mean `{c}`?"
                )),
                None => d.help(format!("`{s}` is not a parameter in scope; write {want}")),
            };
        } else {
            d = d.help(format!("write {want}"));
        }
        d
    }

    pub fn int(&mut self, key: &'static str, min: i64) -> Result<Option<i64>> {
        self.note(key, KeyType::Int { min });
        let Some(i) = self.find(key) else {
            return Ok(None);
        };
        let (v, span) = (self.vals[i].value.clone(), self.vals[i].span);
        match v {
            Value::Int(n) => check_range(&self.op, key, n, min, span).map(Some),
            other => Err(self.type_err(key, &other, span, "an integer", Some(i))),
        }
    }

    pub fn req_int(&mut self, key: &'static str, min: i64) -> Result<i64> {
        match self.int(key, min)? {
            Some(v) => Ok(v),
            None => Err(self.missing(key, "an integer")),
        }
    }

    pub fn missing(&self, key: &str, want: &str) -> Diagnostic {
        // A misspelt key is the likelier mistake: report it rather than the missing one.
        for (i, v) in self.vals.iter().enumerate() {
            if let (false, Some((k, ks))) = (self.used[i], &v.key) {
                if crate::diag::did_you_mean(k, [key]).is_some() {
                    return Diagnostic::new(
                        "spec::unknown-key",
                        format!("unknown parameter `{k}` for `{}`", self.op),
                    )
                    .at(*ks, "unknown parameter")
                    .help(format!("did you mean `{key}`?"));
                }
            }
        }
        Diagnostic::new("spec::missing", format!("`{}` needs `{key}`", self.op))
            .at(self.span, format!("`{key}` is missing"))
            .help(format!("add `{key}`: {want}"))
    }

    pub fn float(&mut self, key: &'static str, lo: f64, hi: f64) -> Result<Option<f64>> {
        self.note(key, KeyType::Float { lo, hi });
        let Some(i) = self.find(key) else {
            return Ok(None);
        };
        let (v, span) = (self.vals[i].value.clone(), self.vals[i].span);
        let f = match v {
            Value::Float(f) => f,
            Value::Int(n) => n as f64,
            other => return Err(self.type_err(key, &other, span, "a number", Some(i))),
        };
        if !(f >= lo && f <= hi) {
            return Err(Diagnostic::new(
                "spec::range",
                format!("`{key}` of `{}` is {f}, outside [{lo}, {hi}]", self.op),
            )
            .at(span, "out of range")
            .help(format!("use a value from {lo} to {hi}")));
        }
        Ok(Some(f))
    }

    pub fn bool(&mut self, key: &'static str) -> Result<Option<bool>> {
        self.note(key, KeyType::Bool);
        let Some(i) = self.find(key) else {
            return Ok(None);
        };
        let (v, span) = (self.vals[i].value.clone(), self.vals[i].span);
        match v {
            Value::Bool(b) => Ok(Some(b)),
            other => Err(self.type_err(key, &other, span, "true or false", Some(i))),
        }
    }

    /// One of a fixed set of words.
    pub fn word(&mut self, key: &'static str, allowed: &[&str]) -> Result<Option<(String, Span)>> {
        self.note(
            key,
            KeyType::Word(allowed.iter().map(|w| w.to_string()).collect()),
        );
        let Some(i) = self.find(key) else {
            return Ok(None);
        };
        let (v, span) = (self.vals[i].value.clone(), self.vals[i].span);
        match v {
            Value::Sym(s) | Value::Str(s) if allowed.contains(&s.as_str()) => Ok(Some((s, span))),
            Value::Sym(s) | Value::Str(s) => Err(Diagnostic::new(
                "spec::unknown-value",
                format!("unknown {key} `{s}` for `{}`", self.op),
            )
            .at(span, format!("not a known {key}"))
            .help(suggest(&s, allowed))),
            other => Err(self.type_err(
                key,
                &other,
                span,
                &format!("one of {}", allowed.join(", ")),
                Some(i),
            )),
        }
    }

    /// An integer or a pair `[a, b]`, e.g. a kernel size.
    pub fn pair(&mut self, key: &'static str, min: i64) -> Result<Option<[usize; 2]>> {
        self.note(key, KeyType::Pair { min });
        let Some(i) = self.find(key) else {
            return Ok(None);
        };
        let (v, span) = (self.vals[i].value.clone(), self.vals[i].span);
        let one = |x: &Value| -> Result<usize> {
            match x {
                Value::Int(n) => check_range(&self.op, key, *n, min, span).map(|n| n as usize),
                other => {
                    Err(self.type_err(key, other, span, "an integer or a pair [h, w]", Some(i)))
                }
            }
        };
        match &v {
            Value::List(l) if l.len() == 2 => Ok(Some([one(&l[0])?, one(&l[1])?])),
            Value::List(_) => {
                Err(self.type_err(key, &v, span, "an integer or a pair [h, w]", Some(i)))
            }
            x => {
                let n = one(x)?;
                Ok(Some([n, n]))
            }
        }
    }

    /// Raw access, for attributes with several forms (padding).
    pub fn raw(&mut self, key: &'static str) -> Option<(Value, Span, usize)> {
        self.note(key, KeyType::Any);
        self.find(key)
            .map(|i| (self.vals[i].value.clone(), self.vals[i].span, i))
    }

    pub fn type_error(&self, key: &str, v: &Value, span: Span, want: &str, i: usize) -> Diagnostic {
        self.type_err(key, v, span, want, Some(i))
    }

    /// Errors on any argument no read asked for.
    pub fn finish(&self) -> Result<()> {
        for d in &self.defaults {
            if let Some((k, ks)) = &d.key {
                if !self.known.contains(&k.as_str()) {
                    let mut known = self.known.clone();
                    known.sort();
                    return Err(Diagnostic::new(
                        "spec::unknown-key",
                        format!("unknown parameter `{k}` in the defaults for `{}`", self.op),
                    )
                    .at(*ks, "unknown parameter")
                    .help(suggest(k, &known)));
                }
            }
        }
        for (i, v) in self.vals.iter().enumerate() {
            if self.used[i] {
                continue;
            }
            if let Some((k, ks)) = &v.key {
                let positional_too =
                    self.positional.contains(&k.as_str()) && self.known.contains(&k.as_str());
                if positional_too
                    || self.vals[..i]
                        .iter()
                        .any(|p| p.key.as_ref().is_some_and(|(pk, _)| pk == k))
                {
                    return Err(Diagnostic::new(
                        "spec::duplicate-key",
                        format!("`{k}` is given twice to `{}`", self.op),
                    )
                    .at(*ks, "second time")
                    .help("keep one of them"));
                }
                let mut known = self.known.clone();
                known.sort();
                return Err(Diagnostic::new(
                    "spec::unknown-key",
                    format!("unknown parameter `{k}` for `{}`", self.op),
                )
                .at(*ks, "unknown parameter")
                .help(suggest(k, &known)));
            }
        }
        Ok(())
    }
}

pub fn check_range(op: &str, key: &str, n: i64, min: i64, span: Span) -> Result<i64> {
    if n < min {
        return Err(Diagnostic::new(
            "spec::range",
            format!("`{key}` of `{op}` is {n}, but must be at least {min}"),
        )
        .at(span, format!("must be >= {min}"))
        .help(format!("use a value of {min} or more")));
    }
    if n > MAX_DIM {
        return Err(Diagnostic::new(
            "limit::size",
            format!("`{key}` of `{op}` is {n}, above the limit of {MAX_DIM}"),
        )
        .at(span, "absurdly large")
        .help(format!(
            "se-compile accepts sizes up to {MAX_DIM} (2^20); check the value"
        )));
    }
    Ok(n)
}
