//! Conditions that gate a filter stage or an output, in Logstash's `if` syntax:
//! `[status] == "success" or [status_code] == 200`, `"error" in [tags]`, `![cost_usd]`,
//! `exists [a][b]`, `[model] in ["gpt-4.1", "x"]`, `[message] =~ /^\{/`, `and`/`or`/`not`, parentheses.
//! Compiled once at start-up; regexes are compiled then too. The source is split into tokens
//! (`lexer`), parsed into a tree (`parser`) and the tree is evaluated per event (`eval`); `print`
//! writes a tree back as canonical source.

mod eval;
mod lexer;
mod parser;
mod print;
#[cfg(test)]
mod tests;

use crate::event::{Event, FieldPath};
use regex::Regex;
use serde_json::Value;

/// A compiled condition. `Display` prints it in canonical form, which compiles to an equal
/// condition; two conditions are equal when their trees are, however the sources were spelled.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    expr: Expr,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

/// Why a condition did not compile; `offset` is the byte position in the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at character {}", offset + 1)]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
}

impl ConditionError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        ConditionError {
            offset,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Exists(FieldPath),
    Truthy(Operand),
    Compare(Operand, CmpOp, Operand),
    In(Operand, Operand),
    Match(Operand, Pattern),
}

/// A compiled regex, equal to another when their patterns are the same text.
#[derive(Debug, Clone)]
struct Pattern(Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Field(FieldPath),
    Literal(Value),
    List(Vec<Value>),
}

impl Condition {
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        Ok(Condition {
            source: source.to_string(),
            expr: parser::parse(source)?,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, event: &Event) -> bool {
        eval::eval(&self.expr, event)
    }
}
