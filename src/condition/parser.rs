//! Turns a condition's tokens into an [`Expr`] tree by recursive descent: `or` binds loosest,
//! then `and`, then `not`, then one comparison, `in` or regex match between two operands.

use super::lexer::{tokenize, Token};
use super::{CmpOp, ConditionError, Expr, Operand, Pattern};
use regex::Regex;
use serde_json::Value;

/// The tree of `source`, or why it is not a condition.
pub(super) fn parse(source: &str) -> Result<Expr, ConditionError> {
    let tokens = tokenize(source)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        end: source.len(),
    };
    let expr = parser.or()?;
    if let Some((tok, at)) = parser.tokens.get(parser.pos) {
        return Err(ConditionError::new(
            *at,
            format!("unexpected {} after a complete condition", tok.describe()),
        ));
    }
    Ok(expr)
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
        ConditionError::new(self.offset(), message)
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
                let m = Expr::Match(left, Pattern(re));
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

/// A number token's value: an integer when it is written as one, otherwise a double.
fn number_value(n: f64, raw: &str) -> Value {
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}
