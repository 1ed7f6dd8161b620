//! Expression evaluation: template parameters, arithmetic such as `filters * 4`, conditions.
//! Integer arithmetic is checked: an overflow is a diagnostic, never a wrap or a panic.

use crate::diag::{Diagnostic, Result};
use crate::ir::args::Value;
use crate::spec::ast::{BinOp, Expr, ExprKind};

/// Variables in scope, innermost last.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub vars: Vec<(String, Value)>,
}

impl Vars {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
    pub fn names(&self) -> Vec<String> {
        self.vars.iter().map(|(n, _)| n.clone()).collect()
    }
}

fn overflow(e: &Expr) -> Diagnostic {
    Diagnostic::new("limit::overflow", "integer overflow in this expression")
        .at(e.span, "result does not fit in 64 bits")
        .help("use smaller values")
}

fn type_err(e: &Expr, what: &str, v: &Value, vars: &Vars) -> Diagnostic {
    let d = Diagnostic::new(
        "spec::type",
        format!("{what}, found {} `{}`", v.type_name(), v.describe()),
    )
    .at(e.span, format!("this is {}", v.type_name()));
    match v {
        Value::Sym(s) => {
            let names = vars.names();
            match crate::diag::did_you_mean(s, names.iter().map(|n| n.as_str())) {
                Some(c) => d.help(format!(
                    "`{s}` is not a parameter in scope; did you mean `{c}`?"
                )),
                None => d.help(format!(
                    "`{s}` is not a parameter in scope; declare it in the block's params"
                )),
            }
        }
        _ => d.help("use a value of the right type"),
    }
}

pub fn eval(e: &Expr, vars: &Vars) -> Result<Value> {
    Ok(match &e.kind {
        ExprKind::Int(i) => Value::Int(*i),
        ExprKind::Float(f) => Value::Float(*f),
        ExprKind::Bool(b) => Value::Bool(*b),
        ExprKind::Str(s) => Value::Str(s.clone()),
        ExprKind::Name(n) => vars
            .get(n)
            .cloned()
            .unwrap_or_else(|| Value::Sym(n.clone())),
        ExprKind::List(l) => Value::List(l.iter().map(|x| eval(x, vars)).collect::<Result<_>>()?),
        ExprKind::Neg(x) => match eval(x, vars)? {
            Value::Int(i) => Value::Int(i.checked_neg().ok_or_else(|| overflow(e))?),
            Value::Float(f) => Value::Float(-f),
            v => return Err(type_err(x, "`-` needs a number", &v, vars)),
        },
        ExprKind::Not(x) => match eval(x, vars)? {
            Value::Bool(b) => Value::Bool(!b),
            v => return Err(type_err(x, "`not` needs true or false", &v, vars)),
        },
        ExprKind::Bin(op, a, b) => bin(e, op, a, b, vars)?,
        ExprKind::Call(f, args) => {
            let vals: Vec<Value> = args.iter().map(|x| eval(x, vars)).collect::<Result<_>>()?;
            let nums: Vec<f64> = vals
                .iter()
                .zip(args)
                .map(|(v, x)| match v {
                    Value::Int(i) => Ok(*i as f64),
                    Value::Float(f) => Ok(*f),
                    v => Err(type_err(x, &format!("`{}` needs numbers", f.name), v, vars)),
                })
                .collect::<Result<_>>()?;
            let all_int = vals.iter().all(|v| matches!(v, Value::Int(_)));
            let arity = |n: usize| -> Result<()> {
                if nums.len() != n {
                    return Err(Diagnostic::new(
                        "spec::arity",
                        format!("`{}` takes {n} argument(s), got {}", f.name, nums.len()),
                    )
                    .at(e.span, "wrong number of arguments")
                    .help(format!(
                        "write e.g. `{}({})`",
                        f.name,
                        vec!["x"; n].join(", ")
                    )));
                }
                Ok(())
            };
            let to_int = |x: f64| -> Result<Value> {
                if x.is_finite() && x.abs() < 9.0e18 {
                    Ok(Value::Int(x as i64))
                } else {
                    Err(overflow(e))
                }
            };
            match f.name.as_str() {
                "min" | "max" if nums.len() >= 2 => {
                    let pick = |a: f64, b: f64| if f.name == "min" { a.min(b) } else { a.max(b) };
                    if all_int {
                        let ints = vals
                            .iter()
                            .map(|v| if let Value::Int(i) = v { *i } else { 0 });
                        Value::Int(if f.name == "min" {
                            ints.min().unwrap_or(0)
                        } else {
                            ints.max().unwrap_or(0)
                        })
                    } else {
                        Value::Float(nums.iter().copied().reduce(pick).unwrap_or(0.0))
                    }
                }
                "floor" => {
                    arity(1)?;
                    to_int(nums[0].floor())?
                }
                "ceil" => {
                    arity(1)?;
                    to_int(nums[0].ceil())?
                }
                "round" | "int" => {
                    arity(1)?;
                    to_int(if f.name == "round" {
                        nums[0].round()
                    } else {
                        nums[0].trunc()
                    })?
                }
                "abs" => {
                    arity(1)?;
                    match vals[0] {
                        Value::Int(i) => Value::Int(i.checked_abs().ok_or_else(|| overflow(e))?),
                        _ => Value::Float(nums[0].abs()),
                    }
                }
                "min" | "max" => arity(2).map(|_| Value::Int(0))?,
                other => {
                    return Err(Diagnostic::new(
                        "spec::unknown-function",
                        format!("unknown function `{other}`"),
                    )
                    .at(f.span, "not a function")
                    .help(crate::diag::suggest(
                        other,
                        &["min", "max", "floor", "ceil", "round", "int", "abs"],
                    )))
                }
            }
        }
    })
}

fn bin(e: &Expr, op: &BinOp, a: &Expr, b: &Expr, vars: &Vars) -> Result<Value> {
    let (va, vb) = (eval(a, vars)?, eval(b, vars)?);
    use BinOp::*;
    if matches!(op, And | Or) {
        return match (&va, &vb) {
            (Value::Bool(x), Value::Bool(y)) => {
                Ok(Value::Bool(if *op == And { *x && *y } else { *x || *y }))
            }
            (Value::Bool(_), v) => Err(type_err(b, "`and`/`or` need true or false", v, vars)),
            (v, _) => Err(type_err(a, "`and`/`or` need true or false", v, vars)),
        };
    }
    if matches!(op, Eq | Ne) {
        let same = match (&va, &vb) {
            (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => {
                (*x as f64) == *y
            }
            (Value::Sym(x) | Value::Str(x), Value::Sym(y) | Value::Str(y)) => x == y,
            _ => va == vb,
        };
        return Ok(Value::Bool(same == (*op == Eq)));
    }
    let num = |x: &Expr, v: &Value| -> Result<f64> {
        match v {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            v => Err(type_err(x, "arithmetic needs numbers", v, vars)),
        }
    };
    if let (Value::Int(x), Value::Int(y)) = (&va, &vb) {
        let (x, y) = (*x, *y);
        let zero = || {
            Diagnostic::new("spec::division-by-zero", "division by zero")
                .at(b.span, "this is 0")
                .help("divide by a non-zero value")
        };
        let r = match op {
            Add => x.checked_add(y),
            Sub => x.checked_sub(y),
            Mul => x.checked_mul(y),
            FloorDiv | Rem if y == 0 => return Err(zero()),
            Div if y == 0 => return Err(zero()),
            FloorDiv => x.checked_div_euclid(y),
            Rem => x.checked_rem_euclid(y),
            // `/` stays an integer when exact; otherwise it is a number, which an integer
            // attribute then rejects instead of silently truncating.
            Div if x % y == 0 => x.checked_div(y),
            Div => return Ok(Value::Float(x as f64 / y as f64)),
            Lt => return Ok(Value::Bool(x < y)),
            Le => return Ok(Value::Bool(x <= y)),
            Gt => return Ok(Value::Bool(x > y)),
            Ge => return Ok(Value::Bool(x >= y)),
            And | Or | Eq | Ne => unreachable!("handled above"),
        };
        return r.map(Value::Int).ok_or_else(|| overflow(e));
    }
    let (x, y) = (num(a, &va)?, num(b, &vb)?);
    Ok(match op {
        Add => Value::Float(x + y),
        Sub => Value::Float(x - y),
        Mul => Value::Float(x * y),
        Div | FloorDiv | Rem if y == 0.0 => {
            return Err(
                Diagnostic::new("spec::division-by-zero", "division by zero")
                    .at(b.span, "this is 0")
                    .help("divide by a non-zero value"),
            )
        }
        Div => Value::Float(x / y),
        FloorDiv => Value::Float((x / y).floor()),
        Rem => Value::Float(x.rem_euclid(y)),
        Lt => Value::Bool(x < y),
        Le => Value::Bool(x <= y),
        Gt => Value::Bool(x > y),
        Ge => Value::Bool(x >= y),
        And | Or | Eq | Ne => unreachable!("handled above"),
    })
}
