//! The one expression language of pipeline gates and rollout analysis: a
//! comparison of two arithmetic expressions, e.g.
//! `p99_ms <= stable.p99_ms * 1.5 + 5` or `accuracy >= parent.accuracy - 0.01`.
//!
//! Grammar (usual precedence: unary minus, then `* /`, then `+ -`, each
//! left-associative):
//!
//! ```text
//! comparison := expr ("<=" | "<" | ">=" | ">" | "==" | "!=") expr
//! expr       := term (("+" | "-") term)*
//! term       := unary (("*" | "/") unary)*
//! unary      := "-" unary | primary
//! primary    := number | identifier | "(" expr ")"
//! identifier := name ("." name)*      name := [A-Za-z_][A-Za-z0-9_]*
//! ```
//!
//! [`parse_with`] can let names with given prefixes contain dashes
//! (`prom.burn-rate`: PromQL query names are TOML keys, which may): there a
//! `-` directly between two name characters belongs to the name, as it did
//! when tokens had to be separated by spaces, and `a - b` subtracts.
//!
//! This module owns parsing and arithmetic only. Which identifiers exist,
//! and what a missing value means, is the caller's: gates and analysis each
//! check names and word their own errors.

use std::fmt;

/// Deepest nesting of parentheses and unary minus accepted (keeps a
/// hostile config from exhausting the stack).
const MAX_DEPTH: usize = 64;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
    Ne,
}

impl Cmp {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Le => a <= b,
            Cmp::Lt => a < b,
            Cmp::Ge => a >= b,
            Cmp::Gt => a > b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Le => "<=",
            Cmp::Lt => "<",
            Cmp::Ge => ">=",
            Cmp::Gt => ">",
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
        }
    }
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// An arithmetic expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Number(f64),
    /// A (dotted) name, with the 1-based column where it starts.
    Ident {
        name: String,
        column: usize,
    },
    Neg(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
}

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq)]
pub enum Undefined {
    /// This identifier has no value.
    Missing(String),
    DivisionByZero,
    /// The arithmetic overflowed to infinity.
    NotFinite,
}

impl fmt::Display for Undefined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undefined::Missing(name) => write!(f, "{name} has no value"),
            Undefined::DivisionByZero => f.write_str("division by zero"),
            Undefined::NotFinite => f.write_str("the arithmetic overflowed"),
        }
    }
}

impl Expr {
    /// The value, with identifiers looked up in `value`.
    pub fn eval(&self, value: &dyn Fn(&str) -> Option<f64>) -> Result<f64, Undefined> {
        let x = match self {
            Expr::Number(x) => *x,
            Expr::Ident { name, .. } => {
                value(name).ok_or_else(|| Undefined::Missing(name.clone()))?
            }
            Expr::Neg(e) => -e.eval(value)?,
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval(value)?, b.eval(value)?);
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div if b == 0.0 => return Err(Undefined::DivisionByZero),
                    BinOp::Div => a / b,
                }
            }
        };
        if x.is_finite() {
            Ok(x)
        } else {
            Err(Undefined::NotFinite)
        }
    }

    /// Every identifier, left to right.
    pub fn identifiers(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.walk(&mut |e| {
            if let Expr::Ident { name, .. } = e {
                out.push(name.as_str());
            }
        });
        out
    }

    fn walk<'a>(&'a self, f: &mut dyn FnMut(&'a Expr)) {
        f(self);
        match self {
            Expr::Number(_) | Expr::Ident { .. } => {}
            Expr::Neg(e) => e.walk(f),
            Expr::Bin(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
        }
    }

    /// Rewrite every identifier with `f` (e.g. to a canonical name); the
    /// first error stops.
    pub fn map_identifiers<E>(
        &mut self,
        f: &mut dyn FnMut(&str, usize) -> Result<String, E>,
    ) -> Result<(), E> {
        match self {
            Expr::Number(_) => Ok(()),
            Expr::Ident { name, column } => {
                *name = f(name, *column)?;
                Ok(())
            }
            Expr::Neg(e) => e.map_identifiers(f),
            Expr::Bin(_, a, b) => {
                a.map_identifiers(f)?;
                b.map_identifiers(f)
            }
        }
    }
}

/// `left op right`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub left: Expr,
    pub op: Cmp,
    pub right: Expr,
}

impl Comparison {
    /// Every identifier, left to right.
    pub fn identifiers(&self) -> Vec<&str> {
        let mut ids = self.left.identifiers();
        ids.extend(self.right.identifiers());
        ids
    }

    /// Rewrite every identifier with `f`; the first error stops.
    pub fn map_identifiers<E>(
        &mut self,
        f: &mut dyn FnMut(&str, usize) -> Result<String, E>,
    ) -> Result<(), E> {
        self.left.map_identifiers(f)?;
        self.right.map_identifiers(f)
    }

    /// (left value, right value, holds), or why one side has no value.
    pub fn eval(&self, value: &dyn Fn(&str) -> Option<f64>) -> Result<(f64, f64, bool), Undefined> {
        let left = self.left.eval(value)?;
        let right = self.right.eval(value)?;
        Ok((left, right, self.op.holds(left, right)))
    }
}

/// A syntax error at a 1-based column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Number(f64),
    Ident(String),
    Op(BinOp),
    Cmp(Cmp),
    Open,
    Close,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Number(x) => write!(f, "{x}"),
            Tok::Ident(s) => f.write_str(s),
            Tok::Op(BinOp::Add) => f.write_str("+"),
            Tok::Op(BinOp::Sub) => f.write_str("-"),
            Tok::Op(BinOp::Mul) => f.write_str("*"),
            Tok::Op(BinOp::Div) => f.write_str("/"),
            Tok::Cmp(c) => f.write_str(c.symbol()),
            Tok::Open => f.write_str("("),
            Tok::Close => f.write_str(")"),
        }
    }
}

const COMPARISONS: &str = "<=, <, >=, >, == or !=";

fn err(column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        message: message.into(),
    }
}

fn name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Tokens with their 1-based columns; names starting with one of `dashed`
/// may contain dashes.
fn tokenize(text: &str, dashed: &[&str]) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // An exponent: e/E, an optional sign, digits.
            if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                let mut j = i + 1;
                if j < chars.len() && matches!(chars[j], '+' | '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            if i < chars.len() && name_char(chars[i]) {
                let end = (i..chars.len())
                    .find(|&k| !name_char(chars[k]) && chars[k] != '.')
                    .unwrap_or(chars.len());
                let word: String = chars[start..end].iter().collect();
                return Err(err(
                    col,
                    format!(
                        "\"{word}\" is neither a number nor a name (names start with a letter)"
                    ),
                ));
            }
            let word: String = chars[start..i].iter().collect();
            let x = word
                .parse::<f64>()
                .map_err(|_| err(col, format!("\"{word}\" is not a number")))?;
            if !x.is_finite() {
                return Err(err(col, format!("\"{word}\" is not a finite number")));
            }
            out.push((Tok::Number(x), col));
            continue;
        }
        if name_start(c) {
            let start = i;
            loop {
                while i < chars.len() && name_char(chars[i]) {
                    i += 1;
                }
                let after = chars.get(i + 1).copied();
                match chars.get(i) {
                    Some('.') if after.is_some_and(name_start) => i += 1,
                    // `prom.burn-rate`: a dash between name characters is
                    // part of the name (see the module docs).
                    Some('-')
                        if after.is_some_and(name_char) && {
                            let sofar: String = chars[start..i].iter().collect();
                            dashed.iter().any(|p| sofar.starts_with(p))
                        } =>
                    {
                        i += 1
                    }
                    Some('.') => {
                        return Err(err(
                            i + 1,
                            "a \".\" must be followed by a name, as in stable.p99_ms",
                        ));
                    }
                    _ => break,
                }
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            continue;
        }
        let (tok, len) = match (c, next) {
            ('<', Some('=')) => (Tok::Cmp(Cmp::Le), 2),
            ('>', Some('=')) => (Tok::Cmp(Cmp::Ge), 2),
            ('=', Some('=')) => (Tok::Cmp(Cmp::Eq), 2),
            ('!', Some('=')) => (Tok::Cmp(Cmp::Ne), 2),
            ('<', _) => (Tok::Cmp(Cmp::Lt), 1),
            ('>', _) => (Tok::Cmp(Cmp::Gt), 1),
            ('+', _) => (Tok::Op(BinOp::Add), 1),
            ('-', _) => (Tok::Op(BinOp::Sub), 1),
            ('*', _) => (Tok::Op(BinOp::Mul), 1),
            ('/', _) => (Tok::Op(BinOp::Div), 1),
            ('(', _) => (Tok::Open, 1),
            (')', _) => (Tok::Close, 1),
            ('=' | '!', _) => {
                let shown = match next {
                    Some(n) if !n.is_whitespace() => format!("{c}{n}"),
                    _ => c.to_string(),
                };
                return Err(err(
                    col,
                    format!("\"{shown}\" is not a comparison; use {COMPARISONS}"),
                ));
            }
            _ => {
                return Err(err(
                    col,
                    format!(
                        "\"{c}\" is not an operator; use + - * / ( ) and one comparison ({COMPARISONS})"
                    ),
                ));
            }
        };
        out.push((tok, col));
        i += len;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Column just past the text, for "expected ... at the end" errors.
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, c)| *c)
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err(
                self.column(),
                format!("nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.term()?;
        while let Some(Tok::Op(op @ (BinOp::Add | BinOp::Sub))) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.term()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while let Some(Tok::Op(op @ (BinOp::Mul | BinOp::Div))) = self.peek() {
            let op = *op;
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if let Some(Tok::Op(BinOp::Sub)) = self.peek() {
            self.pos += 1;
            self.deeper()?;
            let e = self.unary()?;
            self.depth -= 1;
            return Ok(match e {
                Expr::Number(x) => Expr::Number(-x),
                e => Expr::Neg(Box::new(e)),
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let column = self.column();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return Err(err(
                column,
                "expected a number, a metric or \"(\" at the end",
            ));
        };
        self.pos += 1;
        match tok {
            Tok::Number(x) => Ok(Expr::Number(x)),
            Tok::Ident(name) => Ok(Expr::Ident { name, column }),
            Tok::Open => {
                self.deeper()?;
                let e = self.expr()?;
                self.depth -= 1;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    Some(t) => Err(err(
                        self.column(),
                        format!(
                            "expected \")\" to close the \"(\" at column {column}, found \"{t}\""
                        ),
                    )),
                    None => Err(err(
                        self.column(),
                        format!("the \"(\" at column {column} is never closed"),
                    )),
                }
            }
            other => Err(err(
                column,
                format!("expected a number, a metric or \"(\", found \"{other}\""),
            )),
        }
    }
}

/// Parse `text` as one comparison.
pub fn parse(text: &str) -> Result<Comparison, ParseError> {
    parse_with(text, &[])
}

/// Parse `text` as one comparison, where names starting with one of
/// `dashed` (e.g. `"prom."`) may contain dashes.
pub fn parse_with(text: &str, dashed: &[&str]) -> Result<Comparison, ParseError> {
    let toks = tokenize(text, dashed)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end: text.chars().count() + 1,
        depth: 0,
    };
    if p.toks.is_empty() {
        return Err(err(
            1,
            "empty; write <expression> <comparison> <expression>",
        ));
    }
    let left = p.expr()?;
    let op = match p.peek() {
        Some(Tok::Cmp(c)) => *c,
        Some(t) => {
            return Err(err(
                p.column(),
                format!("expected an operator or a comparison ({COMPARISONS}), found \"{t}\""),
            ));
        }
        None => {
            return Err(err(
                p.column(),
                format!("no comparison; add one of {COMPARISONS}"),
            ));
        }
    };
    p.pos += 1;
    let right = p.expr()?;
    match p.peek() {
        None => Ok(Comparison { left, op, right }),
        Some(Tok::Cmp(_)) => Err(err(
            p.column(),
            "only one comparison is allowed; write two conditions instead",
        )),
        Some(t) => Err(err(
            p.column(),
            format!("expected an operator or the end, found \"{t}\""),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Result<f64, Undefined> {
        let c = parse(&format!("{text} == 0")).unwrap();
        c.left.eval(&|name| match name {
            "a" => Some(2.0),
            "stable.p99_ms" => Some(10.0),
            "zero" => Some(0.0),
            _ => None,
        })
    }

    #[test]
    fn precedence_and_associativity() {
        for (text, want) in [
            ("5 + 2 * 3", 11.0),
            ("(5 + 2) * 3", 21.0),
            ("2 * 3 + 5", 11.0),
            ("5 + stable.p99_ms * 1.5", 20.0),
            ("stable.p99_ms * 1.5 + 5", 20.0),
            ("10 - 4 - 3", 3.0),
            ("24 / 4 / 2", 3.0),
            ("10 - 2 * 3 + 1", 5.0),
            ("-a * 3", -6.0),
            ("-(a + 1)", -3.0),
            ("- -a", 2.0),
            ("3 - -a", 5.0),
            ("a*-1", -2.0),
            ("1e3 / 1E1", 100.0),
            ("2.5e-1 * 4", 1.0),
            (".5 + 0.25", 0.75),
            ("((a))", 2.0),
        ] {
            assert_eq!(value(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn comparisons_and_spacing() {
        for (text, op) in [
            ("a<=1", Cmp::Le),
            ("a < 1", Cmp::Lt),
            ("a>=1", Cmp::Ge),
            ("a > 1", Cmp::Gt),
            ("a == 1", Cmp::Eq),
            ("a != 1", Cmp::Ne),
        ] {
            assert_eq!(parse(text).unwrap().op, op, "{text}");
        }
        let c = parse("p99_ms<=stable.p99_ms*1.5+5").unwrap();
        assert_eq!(c.identifiers(), ["p99_ms", "stable.p99_ms"]);
        assert_eq!(parse("a-b<1").unwrap().identifiers(), ["a", "b"]);
        // A dash inside a name (old configs' `prom.burn-rate`) is the name's
        // where the caller says so.
        assert_eq!(
            parse_with("prom.burn-rate < a-b", &["prom."])
                .unwrap()
                .identifiers(),
            ["prom.burn-rate", "a", "b"]
        );
    }

    #[test]
    fn undefined_values_are_errors_not_panics() {
        assert_eq!(value("a / zero"), Err(Undefined::DivisionByZero));
        assert_eq!(value("a / (a - 2)"), Err(Undefined::DivisionByZero));
        assert_eq!(
            value("a + nope"),
            Err(Undefined::Missing("nope".to_string()))
        );
        assert_eq!(value("1e300 * 1e300"), Err(Undefined::NotFinite));
    }

    #[test]
    fn errors_have_positions() {
        for (text, column, want) in [
            ("a ^ 2 < 1", 3, "\"^\" is not an operator"),
            ("a => 1", 3, "\"=>\" is not a comparison"),
            ("a = 1", 3, "\"=\" is not a comparison"),
            ("a + 1", 6, "no comparison"),
            ("a <", 4, "at the end"),
            ("a < 1 < 2", 7, "only one comparison"),
            ("(a + 1 < 2", 8, "expected \")\""),
            ("a < (1 + 2", 11, "never closed"),
            ("a < 1 2", 7, "expected an operator or the end"),
            ("a 1 < 2", 3, "expected an operator or a comparison"),
            ("a < * 2", 5, "found \"*\""),
            ("a < 1e999", 5, "not a finite number"),
            ("a < 1.2.3", 5, "not a number"),
            ("a < 5ms", 5, "neither a number nor a name"),
            ("stable. < 1", 7, "must be followed by a name"),
            ("", 1, "empty"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.column, column, "{text}: {e}");
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
        let deep = format!("{}1{} < 2", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep).unwrap_err().message.contains("nested"));
        let negs = format!("{}1 < 2", "-".repeat(100));
        assert!(parse(&negs).unwrap_err().message.contains("nested"));
    }

    #[test]
    fn identifiers_can_be_rewritten() {
        let mut c = parse("auc >= champion.auc - 0.005").unwrap();
        c.map_identifiers::<()>(&mut |n, _| Ok(n.replace("auc", "roc_auc")))
            .unwrap();
        assert_eq!(c.identifiers(), ["roc_auc", "champion.roc_auc"]);
        let e = c.map_identifiers(&mut |n, col| Err(format!("{n}@{col}")));
        assert_eq!(e, Err("roc_auc@1".to_string()));
    }
}
