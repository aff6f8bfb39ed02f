//! Evaluates a condition tree against an event. A missing field equals nothing, and a number
//! on either side of a comparison makes it numeric.

use super::{CmpOp, Expr, Operand};
use crate::event::Event;
use serde_json::Value;
use std::cmp::Ordering;

/// Whether `event` satisfies `expr`.
pub(super) fn eval(expr: &Expr, event: &Event) -> bool {
    match expr {
        Expr::Or(items) => items.iter().any(|e| eval(e, event)),
        Expr::And(items) => items.iter().all(|e| eval(e, event)),
        Expr::Not(inner) => !eval(inner, event),
        Expr::Exists(path) => event.contains(path),
        Expr::Truthy(op) => match resolve(op, event) {
            Resolved::Value(v) => truthy(v),
            Resolved::List(_) => true,
            Resolved::Missing => false,
        },
        Expr::Compare(l, op, r) => compare(resolve(l, event), *op, resolve(r, event)),
        Expr::In(needle, haystack) => contains(resolve(needle, event), resolve(haystack, event)),
        Expr::Match(op, re) => match resolve(op, event) {
            Resolved::Value(Value::String(s)) => re.0.is_match(s),
            _ => false,
        },
    }
}

enum Resolved<'a> {
    Value(&'a Value),
    List(&'a [Value]),
    Missing,
}

fn resolve<'a>(op: &'a Operand, event: &'a Event) -> Resolved<'a> {
    match op {
        Operand::Field(path) => match event.get(path) {
            Some(v) => Resolved::Value(v),
            None => Resolved::Missing,
        },
        Operand::Literal(v) => Resolved::Value(v),
        Operand::List(items) => Resolved::List(items),
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false))
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        // A number on either side compares numerically, so `[status_code] == 200` also holds
        // for the string "200" that some loggers write.
        (Value::Number(_), _) | (_, Value::Number(_)) => as_number(a)?.partial_cmp(&as_number(b)?),
        (x, y) if x == y => Some(Ordering::Equal),
        _ => None,
    }
}

fn compare(l: Resolved, op: CmpOp, r: Resolved) -> bool {
    let ordering = match (l, r) {
        (Resolved::Value(a), Resolved::Value(b)) => order(a, b),
        (Resolved::List(a), Resolved::Value(Value::Array(b)))
        | (Resolved::Value(Value::Array(b)), Resolved::List(a)) => Some(if a == b.as_slice() {
            Ordering::Equal
        } else {
            Ordering::Less
        }),
        (Resolved::Missing, Resolved::Missing) => None,
        _ => None,
    };
    match (op, ordering) {
        (CmpOp::Ne, None) => true,
        (_, None) => false,
        (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
        (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
        (CmpOp::Lt, Some(o)) => o == Ordering::Less,
        (CmpOp::Le, Some(o)) => o != Ordering::Greater,
        (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
        (CmpOp::Ge, Some(o)) => o != Ordering::Less,
    }
}

fn contains(needle: Resolved, haystack: Resolved) -> bool {
    let Resolved::Value(needle) = needle else {
        return false;
    };
    match haystack {
        Resolved::List(items) => items
            .iter()
            .any(|v| order(needle, v) == Some(Ordering::Equal)),
        Resolved::Value(Value::Array(items)) => items
            .iter()
            .any(|v| order(needle, v) == Some(Ordering::Equal)),
        Resolved::Value(Value::String(s)) => needle.as_str().is_some_and(|n| s.contains(n)),
        Resolved::Value(Value::Object(m)) => needle.as_str().is_some_and(|k| m.contains_key(k)),
        _ => false,
    }
}
