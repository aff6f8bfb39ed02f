//! Splits a condition's source into tokens, each with the byte offset it starts at, so that
//! the parser's errors can point at the token they are about.

use super::ConditionError;
use crate::event::FieldPath;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Token {
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
    /// How an error message names this token.
    pub(super) fn describe(&self) -> String {
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

/// The tokens of `src` with their byte offsets, or the first character that starts no token.
pub(super) fn tokenize(src: &str) -> Result<Vec<(Token, usize)>, ConditionError> {
    let mut lexer = Lexer {
        src,
        pos: 0,
        list_depth: 0,
    };
    let mut tokens = Vec::new();
    while lexer.pos < src.len() {
        let start = lexer.pos;
        if let Some(token) = lexer.next_token()? {
            tokens.push((token, start));
        }
    }
    Ok(tokens)
}

struct Lexer<'a> {
    src: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
    /// Lists opened and not yet closed: a `]` outside a list belongs to a field path.
    list_depth: usize,
}

impl Lexer<'_> {
    /// Reads the token at `pos` and moves past it; `None` for whitespace.
    fn next_token(&mut self) -> Result<Option<Token>, ConditionError> {
        let c = self.src.as_bytes()[self.pos];
        let token = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                self.pos += 1;
                return Ok(None);
            }
            b'(' => self.punctuation(Token::LParen),
            b')' => self.punctuation(Token::RParen),
            b',' => self.punctuation(Token::Comma),
            b']' if self.list_depth > 0 => {
                self.list_depth -= 1;
                self.punctuation(Token::RBracketList)
            }
            b'[' => self.bracket()?,
            b'"' | b'\'' => self.string()?,
            b'/' => self.regex()?,
            b'=' | b'!' | b'<' | b'>' | b'&' | b'|' => self.symbol_operator()?,
            b'0'..=b'9' | b'-' => self.number()?,
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'@' => self.word(),
            _ => {
                let ch = self.src[self.pos..].chars().next().unwrap();
                return Err(ConditionError::new(
                    self.pos,
                    format!("unexpected character `{ch}`"),
                ));
            }
        };
        Ok(Some(token))
    }

    /// Moves past a one-byte token.
    fn punctuation(&mut self, token: Token) -> Token {
        self.pos += 1;
        token
    }

    /// Reads `[`: a list when a literal or `]` follows, otherwise a field path.
    fn bracket(&mut self) -> Result<Token, ConditionError> {
        let next = self.src[self.pos + 1..]
            .trim_start()
            .as_bytes()
            .first()
            .copied();
        if matches!(next, Some(b'"' | b'\'' | b']' | b'0'..=b'9' | b'-')) {
            self.list_depth += 1;
            return Ok(self.punctuation(Token::LBracketList));
        }
        self.field_path()
    }

    /// Reads a field path: `[name]` segments written one after the other, as in `[a][b]`.
    fn field_path(&mut self) -> Result<Token, ConditionError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut end = start;
        while end < bytes.len() && bytes[end] == b'[' {
            match self.src[end..].find(']') {
                Some(close) => end += close + 1,
                None => return Err(ConditionError::new(end, "a `[` has no matching `]`")),
            }
        }
        let path = FieldPath::parse(&self.src[start..end])
            .map_err(|e| ConditionError::new(start, e.to_string()))?;
        self.pos = end;
        Ok(Token::Field(path))
    }

    /// Reads a single- or double-quoted string with its escapes resolved.
    fn string(&mut self) -> Result<Token, ConditionError> {
        let (s, end) = read_string(self.src, self.pos)
            .ok_or_else(|| ConditionError::new(self.pos, "unterminated string"))?;
        self.pos = end;
        Ok(Token::Str(s))
    }

    /// Reads `/pattern/`, where `\/` stands for a slash in the pattern.
    fn regex(&mut self) -> Result<Token, ConditionError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut end = start + 1;
        let mut pattern = String::new();
        loop {
            match bytes.get(end) {
                None => {
                    return Err(ConditionError::new(
                        start,
                        "unterminated regex: add a closing `/`",
                    ))
                }
                Some(b'\\') if bytes.get(end + 1) == Some(&b'/') => {
                    pattern.push('/');
                    end += 2;
                }
                Some(b'/') => break,
                Some(_) => {
                    let ch = self.src[end..].chars().next().unwrap();
                    pattern.push(ch);
                    end += ch.len_utf8();
                }
            }
        }
        self.pos = end + 1;
        Ok(Token::Regex(pattern))
    }

    /// Reads an operator written with symbols; `&&`, `||` and `!` become `and`, `or`, `not`.
    fn symbol_operator(&mut self) -> Result<Token, ConditionError> {
        let two = self.src.get(self.pos..self.pos + 2).unwrap_or("");
        let (op, len): (&'static str, usize) = match two {
            "==" => ("==", 2),
            "!=" => ("!=", 2),
            "<=" => ("<=", 2),
            ">=" => (">=", 2),
            "=~" => ("=~", 2),
            "!~" => ("!~", 2),
            "&&" => ("and", 2),
            "||" => ("or", 2),
            _ => match self.src.as_bytes()[self.pos] {
                b'<' => ("<", 1),
                b'>' => (">", 1),
                b'!' => ("not", 1),
                _ => {
                    return Err(ConditionError::new(
                        self.pos,
                        "unknown operator (use ==, !=, <, <=, >, >=, =~, !~, in, and, or, not)",
                    ))
                }
            },
        };
        self.pos += len;
        Ok(Token::Op(op))
    }

    /// Reads a number: a digit or `-`, then digits, `.`, exponents and signs.
    fn number(&mut self) -> Result<Token, ConditionError> {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut end = start + 1;
        while end < bytes.len()
            && matches!(bytes[end], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
        {
            end += 1;
        }
        let raw = &self.src[start..end];
        let n: f64 = raw
            .parse()
            .map_err(|_| ConditionError::new(start, format!("bad number `{raw}`")))?;
        // JSON has no infinity: a number past the range of a double would become null.
        if !n.is_finite() {
            return Err(ConditionError::new(
                start,
                format!("number `{raw}` is too large"),
            ));
        }
        self.pos = end;
        Ok(Token::Num(n, raw.to_string()))
    }

    /// Reads a bare word: the keywords `and`, `or`, `not`, `in`, or an identifier.
    fn word(&mut self) -> Token {
        let bytes = self.src.as_bytes();
        let mut end = self.pos;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || matches!(bytes[end], b'_' | b'.' | b'@'))
        {
            end += 1;
        }
        let word = &self.src[self.pos..end];
        self.pos = end;
        match word {
            "and" => Token::Op("and"),
            "or" => Token::Op("or"),
            "not" => Token::Op("not"),
            "in" => Token::Op("in"),
            _ => Token::Ident(word.to_string()),
        }
    }
}

/// The string whose opening quote is at `start`, escapes resolved, and the offset after its
/// closing quote; `None` when it is not closed.
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
