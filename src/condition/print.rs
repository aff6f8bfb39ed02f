//! Writes a condition tree back as source in one canonical form that parses to the same tree:
//! `and`/`or`/`not` as words, double-quoted strings, and parentheses only around a nested
//! `and`/`or` that would otherwise merge into its parent.

use super::{CmpOp, Condition, Expr, Operand, Pattern};
use serde_json::Value;
use std::fmt::{self, Display, Formatter, Write};

impl Display for Condition {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => write_joined(f, items, " or ", |e| matches!(e, Expr::Or(_))),
            Expr::And(items) => write_joined(f, items, " and ", |e| {
                matches!(e, Expr::Or(_) | Expr::And(_))
            }),
            Expr::Not(inner) => match &**inner {
                Expr::In(needle, haystack) => write!(f, "{needle} not in {haystack}"),
                Expr::Match(operand, pattern) => write!(f, "{operand} !~ {pattern}"),
                Expr::Or(_) | Expr::And(_) => write!(f, "not ({inner})"),
                _ => write!(f, "not {inner}"),
            },
            Expr::Exists(path) => write!(f, "exists {path}"),
            Expr::Truthy(operand) => operand.fmt(f),
            Expr::Compare(left, op, right) => write!(f, "{left} {op} {right}"),
            Expr::In(needle, haystack) => write!(f, "{needle} in {haystack}"),
            Expr::Match(operand, pattern) => write!(f, "{operand} =~ {pattern}"),
        }
    }
}

/// Writes `items` separated by `separator`, parenthesising those that `needs_parens` says
/// would otherwise be read as part of the list itself.
fn write_joined(
    f: &mut Formatter<'_>,
    items: &[Expr],
    separator: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        if needs_parens(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

impl Display for CmpOp {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        })
    }
}

impl Display for Operand {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Field(path) => path.fmt(f),
            Operand::Literal(value) => write_literal(f, value),
            Operand::List(items) => {
                f.write_char('[')?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_literal(f, item)?;
                }
                f.write_char(']')
            }
        }
    }
}

/// Writes a literal as the lexer reads it back: strings double-quoted with `\\`, `\"`, `\n`
/// and `\t` escaped, numbers in their shortest exact form.
fn write_literal(f: &mut Formatter<'_>, value: &Value) -> fmt::Result {
    let Value::String(s) = value else {
        // Numbers, booleans and null print as in JSON; arrays and objects never reach a tree.
        return write!(f, "{value}");
    };
    f.write_char('"')?;
    for ch in s.chars() {
        match ch {
            '\\' => f.write_str("\\\\")?,
            '"' => f.write_str("\\\"")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            other => f.write_char(other)?,
        }
    }
    f.write_char('"')
}

impl Display for Pattern {
    /// `/pattern/` with each `/` written `\/`, the lexer's only escape inside a regex.
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_char('/')?;
        for ch in self.0.as_str().chars() {
            if ch == '/' {
                f.write_str("\\/")?;
            } else {
                f.write_char(ch)?;
            }
        }
        f.write_char('/')
    }
}
