//! Conditions that gate a filter stage or an output, in Logstash's `if` syntax:
//! `[status] == "success" or [status_code] == 200`, `"error" in [tags]`, `![cost_usd]`,
//! `exists [a][b]`, `[model] in ["gpt-4.1", "x"]`, `[message] =~ /^\{/`, `and`/`or`/`not`, parentheses.
//! Compiled once at start-up; regexes are compiled then too.

use crate::event::{Event, FieldPath};
use regex::Regex;
use serde_json::Value;
use std::cmp::Ordering;

/// A compiled condition.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    expr: Expr,
}

/// Why a condition did not compile; `offset` is the byte position in the source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at character {}", offset + 1)]
pub struct ConditionError {
    pub offset: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Exists(FieldPath),
    Truthy(Operand),
    Compare(Operand, CmpOp, Operand),
    In(Operand, Operand),
    Match(Operand, Regex),
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

#[derive(Debug, Clone)]
enum Operand {
    Field(FieldPath),
    Literal(Value),
    List(Vec<Value>),
}

impl Condition {
    pub fn compile(source: &str) -> Result<Self, ConditionError> {
        let tokens = tokenize(source)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            end: source.len(),
        };
        let expr = parser.or()?;
        if let Some((tok, at)) = parser.tokens.get(parser.pos) {
            return Err(ConditionError {
                offset: *at,
                message: format!("unexpected {} after a complete condition", tok.describe()),
            });
        }
        Ok(Condition {
            source: source.to_string(),
            expr,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, event: &Event) -> bool {
        eval(&self.expr, event)
    }
}

fn eval(expr: &Expr, event: &Event) -> bool {
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
            Resolved::Value(Value::String(s)) => re.is_match(s),
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

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(FieldPath),
    Str(String),
    Num(f64, String),
    Regex(String),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracketList,
    RBracketList,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Field(p) => format!("field {p}"),
            Token::Str(s) => format!("string {s:?}"),
            Token::Num(_, raw) => format!("number {raw}"),
            Token::Regex(r) => format!("regex /{r}/"),
            Token::Ident(i) => format!("`{i}`"),
            Token::Op(o) => format!("`{o}`"),
            Token::LParen => "`(`".into(),
            Token::RParen => "`)`".into(),
            Token::LBracketList => "`[`".into(),
            Token::RBracketList => "`]`".into(),
            Token::Comma => "`,`".into(),
        }
    }
}

fn tokenize(src: &str) -> Result<Vec<(Token, usize)>, ConditionError> {
    let bytes = src.as_bytes();
    let mut tokens: Vec<(Token, usize)> = Vec::new();
    let mut i = 0;
    let err = |offset, message: &str| ConditionError {
        offset,
        message: message.to_string(),
    };
    let mut list_depth = 0usize;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                tokens.push((Token::LParen, start));
                i += 1;
            }
            b')' => {
                tokens.push((Token::RParen, start));
                i += 1;
            }
            b',' => {
                tokens.push((Token::Comma, start));
                i += 1;
            }
            b']' if list_depth > 0 => {
                list_depth -= 1;
                tokens.push((Token::RBracketList, start));
                i += 1;
            }
            b'[' => {
                // `[name]...` is a field path; `[` followed by a literal starts a list.
                let next = src[i + 1..].trim_start().as_bytes().first().copied();
                let is_list = matches!(next, Some(b'"' | b'\'' | b']' | b'0'..=b'9' | b'-'));
                if is_list {
                    list_depth += 1;
                    tokens.push((Token::LBracketList, start));
                    i += 1;
                } else {
                    let mut end = i;
                    while end < bytes.len() && bytes[end] == b'[' {
                        match src[end..].find(']') {
                            Some(close) => end += close + 1,
                            None => return Err(err(end, "a `[` has no matching `]`")),
                        }
                    }
                    let path =
                        FieldPath::parse(&src[i..end]).map_err(|e| err(start, &e.to_string()))?;
                    tokens.push((Token::Field(path), start));
                    i = end;
                }
            }
            b'"' | b'\'' => {
                let (s, end) =
                    read_string(src, i).ok_or_else(|| err(start, "unterminated string"))?;
                tokens.push((Token::Str(s), start));
                i = end;
            }
            b'/' => {
                let mut end = i + 1;
                let mut pattern = String::new();
                loop {
                    match bytes.get(end) {
                        None => return Err(err(start, "unterminated regex: add a closing `/`")),
                        Some(b'\\') if bytes.get(end + 1) == Some(&b'/') => {
                            pattern.push('/');
                            end += 2;
                        }
                        Some(b'/') => break,
                        Some(_) => {
                            let ch = src[end..].chars().next().unwrap();
                            pattern.push(ch);
                            end += ch.len_utf8();
                        }
                    }
                }
                tokens.push((Token::Regex(pattern), start));
                i = end + 1;
            }
            b'=' | b'!' | b'<' | b'>' | b'&' | b'|' => {
                let two = src.get(i..i + 2).unwrap_or("");
                let op: &'static str = match two {
                    "==" => "==",
                    "!=" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    "=~" => "=~",
                    "!~" => "!~",
                    "&&" => "and",
                    "||" => "or",
                    _ => match c {
                        b'<' => "<",
                        b'>' => ">",
                        b'!' => "not",
                        _ => return Err(err(
                            start,
                            "unknown operator (use ==, !=, <, <=, >, >=, =~, !~, in, and, or, not)",
                        )),
                    },
                };
                i += if matches!(op, "<" | ">" | "not") && two != "!=" && two != "!~" {
                    1
                } else {
                    2
                };
                tokens.push((Token::Op(op), start));
            }
            b'0'..=b'9' | b'-' => {
                let mut end = i + 1;
                while end < bytes.len()
                    && matches!(bytes[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    end += 1;
                }
                let raw = &src[i..end];
                let n: f64 = raw
                    .parse()
                    .map_err(|_| err(start, &format!("bad number `{raw}`")))?;
                tokens.push((Token::Num(n, raw.to_string()), start));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'@' => {
                let mut end = i;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric()
                        || matches!(bytes[end], b'_' | b'.' | b'@'))
                {
                    end += 1;
                }
                let word = &src[i..end];
                let tok = match word {
                    "and" => Token::Op("and"),
                    "or" => Token::Op("or"),
                    "not" => Token::Op("not"),
                    "in" => Token::Op("in"),
                    _ => Token::Ident(word.to_string()),
                };
                tokens.push((tok, start));
                i = end;
            }
            _ => {
                return Err(err(
                    start,
                    &format!(
                        "unexpected character `{}`",
                        src[i..].chars().next().unwrap()
                    ),
                ))
            }
        }
    }
    Ok(tokens)
}

fn read_string(src: &str, start: usize) -> Option<(String, usize)> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((idx, ch)) = chars.next() {
        match ch {
            '\\' => {
                let (_, escaped) = chars.next()?;
                out.push(match escaped {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            }
            c if c == quote => return Some((out, start + 1 + idx + 1)),
            c => out.push(c),
        }
    }
    None
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|(_, o)| *o)
            .unwrap_or(self.end)
    }

    fn error(&self, message: impl Into<String>) -> ConditionError {
        ConditionError {
            offset: self.offset(),
            message: message.into(),
        }
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.peek()
            == Some(&Token::Op(match op {
                "and" => "and",
                "or" => "or",
                "not" => "not",
                "in" => "in",
                _ => return false,
            }))
        {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ConditionError> {
        let mut items = vec![self.and()?];
        while self.eat_op("or") {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap()
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut items = vec![self.unary()?];
        while self.eat_op("and") {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap()
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Result<Expr, ConditionError> {
        if self.eat_op("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.pos += 1;
            let inner = self.or()?;
            if self.peek() != Some(&Token::RParen) {
                return Err(self.error("expected `)`"));
            }
            self.pos += 1;
            return Ok(inner);
        }
        if self.peek() == Some(&Token::Ident("exists".into())) {
            self.pos += 1;
            return match self.peek().cloned() {
                Some(Token::Field(path)) => {
                    self.pos += 1;
                    Ok(Expr::Exists(path))
                }
                _ => Err(self.error("`exists` needs a field such as [a][b]")),
            };
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ConditionError> {
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Token::Op(op)) if !matches!(*op, "and" | "or") => *op,
            _ => return Ok(Expr::Truthy(left)),
        };
        self.pos += 1;
        match op {
            "=~" | "!~" => {
                let Some(Token::Regex(pattern)) = self.peek().cloned() else {
                    return Err(self.error(format!("`{op}` needs a regex such as /^\\{{/")));
                };
                let re = Regex::new(&pattern)
                    .map_err(|e| self.error(format!("bad regex /{pattern}/: {e}")))?;
                self.pos += 1;
                let m = Expr::Match(left, re);
                Ok(if op == "!~" {
                    Expr::Not(Box::new(m))
                } else {
                    m
                })
            }
            "in" => Ok(Expr::In(left, self.operand()?)),
            "not" => {
                if !self.eat_op("in") {
                    return Err(self.error("expected `in` after `not`"));
                }
                Ok(Expr::Not(Box::new(Expr::In(left, self.operand()?))))
            }
            _ => {
                let cmp = match op {
                    "==" => CmpOp::Eq,
                    "!=" => CmpOp::Ne,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    ">=" => CmpOp::Ge,
                    other => return Err(self.error(format!("unexpected `{other}`"))),
                };
                Ok(Expr::Compare(left, cmp, self.operand()?))
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, ConditionError> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("the condition ends where a field or value was expected"));
        };
        self.pos += 1;
        match tok {
            Token::Field(p) => Ok(Operand::Field(p)),
            Token::Str(s) => Ok(Operand::Literal(Value::String(s))),
            Token::Num(n, raw) => Ok(Operand::Literal(number_value(n, &raw))),
            Token::Ident(w) if w == "true" => Ok(Operand::Literal(Value::Bool(true))),
            Token::Ident(w) if w == "false" => Ok(Operand::Literal(Value::Bool(false))),
            Token::Ident(w) if w == "null" || w == "nil" => Ok(Operand::Literal(Value::Null)),
            Token::LBracketList => self.list(),
            Token::Ident(w) => {
                self.pos -= 1;
                Err(self.error(format!(
                    "`{w}` is not a value: write a field as [{w}] or a string as \"{w}\""
                )))
            }
            other => {
                self.pos -= 1;
                Err(self.error(format!(
                    "expected a field or value, found {}",
                    other.describe()
                )))
            }
        }
    }

    fn list(&mut self) -> Result<Operand, ConditionError> {
        let mut items = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Token::RBracketList) => {
                    self.pos += 1;
                    return Ok(Operand::List(items));
                }
                Some(Token::Str(s)) => items.push(Value::String(s)),
                Some(Token::Num(n, raw)) => items.push(number_value(n, &raw)),
                _ => return Err(self.error("a list holds strings or numbers: [\"a\", \"b\"]")),
            }
            self.pos += 1;
            match self.peek() {
                Some(Token::Comma) => self.pos += 1,
                Some(Token::RBracketList) => {}
                _ => return Err(self.error("expected `,` or `]` in the list")),
            }
        }
    }
}

fn number_value(n: f64, raw: &str) -> Value {
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(v: Value) -> Event {
        Event::from_map(v.as_object().unwrap().clone(), 0)
    }

    fn check(cond: &str, v: Value) -> bool {
        Condition::compile(cond).unwrap().matches(&ev(v))
    }

    #[test]
    fn shipped_pipeline_conditions() {
        let json_msg = r#"[message] =~ /^\{/"#;
        assert!(check(json_msg, json!({"message": "{\"a\":1}"})));
        assert!(!check(json_msg, json!({"message": "plain"})));
        assert!(!check(json_msg, json!({})));

        let cost = "![cost_usd] and [total_tokens]";
        assert!(check(cost, json!({"total_tokens": 5})));
        assert!(!check(cost, json!({"total_tokens": 5, "cost_usd": 0.1})));
        assert!(!check(cost, json!({})));

        let ok = r#"[status] == "success" or [status_code] == 200"#;
        assert!(check(ok, json!({"status": "success"})));
        assert!(check(ok, json!({"status_code": 200})));
        assert!(check(ok, json!({"status_code": "200"})));
        assert!(!check(ok, json!({"status": "error", "status_code": 429})));

        assert!(check(
            r#""error" in [tags]"#,
            json!({"tags": ["x", "error"]})
        ));
        assert!(!check(r#""error" in [tags]"#, json!({"tags": ["x"]})));
        assert!(!check(r#""error" in [tags]"#, json!({})));
    }

    #[test]
    fn operators() {
        let e = json!({"a": {"b": 5}, "s": "hello", "f": false, "n": null});
        assert!(check("[a][b] > 4 and [a][b] <= 5", e.clone()));
        assert!(check("[a][b] != 4", e.clone()));
        assert!(check("exists [a][b] and not exists [a][c]", e.clone()));
        assert!(check("!exists [x]", e.clone()));
        assert!(!check("[f]", e.clone()));
        assert!(!check("[n]", e.clone()));
        assert!(check("[s] in [\"hello\", \"bye\"]", e.clone()));
        assert!(check("[s] not in [\"bye\"]", e.clone()));
        assert!(check("\"ell\" in [s]", e.clone()));
        assert!(check("[s] !~ /^x/", e.clone()));
        assert!(check("([s] == \"x\" || [a][b] == 5) && true", e.clone()));
        assert!(check("[a][b] in [1, 5]", e.clone()));
        assert!(check("[missing] != 1", e.clone()));
        assert!(!check("[missing] == 1", e.clone()));
        assert!(check(
            "[@metadata][beat] == \"filebeat\"",
            json!({"@metadata": {"beat": "filebeat"}})
        ));
    }

    #[test]
    fn errors_point_at_the_problem() {
        let e = Condition::compile("[a] == ").unwrap_err();
        assert_eq!(e.offset, 7);
        let e = Condition::compile("[a] =~ /(/").unwrap_err();
        assert!(e.message.contains("bad regex"), "{e}");
        let e = Condition::compile("status == 1").unwrap_err();
        assert!(e.message.contains("[status]"), "{e}");
        assert!(Condition::compile("[a] == 1 )").is_err());
        assert!(Condition::compile("[a").is_err());
        assert!(Condition::compile("\"x").is_err());
        assert!(Condition::compile("[a] = 1").is_err());
    }
}
