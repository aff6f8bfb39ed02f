//! The condition language tested by tables, one named row per case: evaluation of every
//! operator against events decoded as the inputs decode them, precedence, string escapes,
//! regex flags, numeric strings, field paths, every error message with its column, and the
//! printer's round trip over all of it.

use super::*;
use crate::event::Fields;

/// One event for the evaluation tables, decoded from JSON text as the HTTP and Beats inputs do.
const EVENT: &str = r#"{
    "status": "success", "status_code": 200, "code_text": "200", "padded": " 10 ",
    "count": 10, "count_text": "10", "nine_text": "9", "latency_ms": 42.5, "big": 1e300,
    "tags": ["x", "error"], "codes": [200, 404], "flag": true, "off": false, "nothing": null,
    "empty": "", "zero": 0, "a": {"b": {"c": 5}}, "log.level": "info", " a ": "spaced",
    "message": "{\"k\":1}", "lines": "first\nsecond", "path": "/v1/chat", "model": "gpt-4.1",
    "obj": {"k": 1}, "@metadata": {"beat": "filebeat", "index": "logs"}
}"#;

fn event(json: &str) -> Event {
    Event::from_fields(Fields::from_json_str(json).unwrap(), 0)
}

fn compile(source: &str) -> Condition {
    Condition::compile(source).unwrap_or_else(|e| panic!("{source:?} does not compile: {e}"))
}

/// Printing `condition` gives source that compiles to an equal condition and prints the same.
fn assert_round_trip(name: &str, condition: &Condition) {
    let printed = condition.to_string();
    let reparsed = Condition::compile(&printed)
        .unwrap_or_else(|e| panic!("{name}: print {printed:?} does not compile: {e}"));
    assert_eq!(
        &reparsed, condition,
        "{name}: print {printed:?} parses to another tree"
    );
    assert_eq!(
        reparsed.to_string(),
        printed,
        "{name}: print is not a fixed point"
    );
}

/// Evaluates each `(name, condition, expected)` row against `json` and round-trips it.
fn check_table(json: &str, table: &[(&str, &str, bool)]) {
    let event = event(json);
    for &(name, source, expected) in table {
        let condition = compile(source);
        assert_eq!(condition.matches(&event), expected, "{name}: {source}");
        assert_round_trip(name, &condition);
    }
}

#[test]
fn comparison_operators() {
    #[rustfmt::skip]
    let table = [
        ("== number", "[status_code] == 200", true),
        ("== other number", "[status_code] == 201", false),
        ("== string", r#"[status] == "success""#, true),
        ("== single-quoted string", "[status] == 'success'", true),
        ("== is case-sensitive", r#"[status] == "Success""#, false),
        ("== true", "[flag] == true", true),
        ("== false", "[off] == false", true),
        ("== null", "[nothing] == null", true),
        ("== nil", "[nothing] == nil", true),
        ("== float", "[latency_ms] == 42.5", true),
        ("== negative", "[zero] == -0", true),
        ("== exponent", "[big] == 1e300", true),
        ("largest double", "[big] < 1.7976931348623157e308", true),
        ("== two fields", "[count] == [count_text]", true),
        ("== list and array", r#"[tags] == ["x", "error"]"#, true),
        ("== list in another order", r#"[tags] == ["error", "x"]"#, false),
        ("== literal on the left", "200 == [status_code]", true),
        ("== string and bool", r#"[flag] == "true""#, false),
        ("== string and null", r#"[nothing] == "null""#, false),
        ("!= number", "[status_code] != 404", true),
        ("!= equal number", "[status_code] != 200", false),
        ("!= string", r#"[status] != "error""#, true),
        ("!= incomparable types", r#"[flag] != "true""#, true),
        ("!= list and array", r#"[tags] != ["error"]"#, true),
        ("< number", "[latency_ms] < 50", true),
        ("< equal number", "[status_code] < 200", false),
        ("< string", r#"[status] < "t""#, true),
        ("< bool", "[off] < true", true),
        ("<= equal number", "[status_code] <= 200", true),
        ("<= string", r#"[model] <= "gpt-4.1""#, true),
        ("> number", "[status_code] > 199", true),
        ("> float", "[latency_ms] > 42.49", true),
        ("> string", r#"[status] > "succ""#, true),
        ("> incomparable types", "[flag] > 0", false),
        (">= equal number", "[status_code] >= 200", true),
        (">= larger number", "[status_code] >= 201", false),
        ("literals only", "1 < 2", true),
        ("compact spelling", "[count]>=10", true),
    ];
    check_table(EVENT, &table);
}

#[test]
fn logical_operators() {
    #[rustfmt::skip]
    let table = [
        ("and: both", "[flag] and [count]", true),
        ("and: one", "[flag] and [off]", false),
        ("&&", "[flag] && [count]", true),
        ("&& without spaces", "[flag]&&[off]", false),
        ("or: one", "[off] or [flag]", true),
        ("or: neither", "[off] or [nothing]", false),
        ("||", "[off] || [flag]", true),
        ("not", "not [off]", true),
        ("!", "![off]", true),
        ("! before a comparison", "![status_code] == 200", false),
        ("not not", "not not [flag]", true),
        ("! !", "!![flag]", true),
        ("not exists", "not exists [missing]", true),
        ("! exists", "!exists [status]", false),
        ("parentheses", "([off] or [flag]) and [count]", true),
        ("nested parentheses", "((([flag])))", true),
        ("and then or", "[flag] and [count] or [off]", true),
        ("shipped: cost backfill", "![cost_usd] and [count]", true),
        ("shipped: success", r#"[status] == "success" or [status_code] == 200"#, true),
    ];
    check_table(EVENT, &table);
}

#[test]
fn membership_operators() {
    #[rustfmt::skip]
    let table = [
        ("string in array field", r#""error" in [tags]"#, true),
        ("array elements match whole", r#""err" in [tags]"#, false),
        ("substring of a string field", r#""ucc" in [status]"#, true),
        ("not a substring", r#""xyz" in [status]"#, false),
        ("key of an object field", r#""k" in [obj]"#, true),
        ("not a key", r#""z" in [obj]"#, false),
        ("field in a list", r#"[status] in ["error", "success"]"#, true),
        ("field not in the list", r#"[status] in ["error"]"#, false),
        ("number in a list", "[status_code] in [200, 201]", true),
        ("numeric string in a number list", "[code_text] in [200]", true),
        ("number in an array field", "404 in [codes]", true),
        ("empty list", "[status] in []", false),
        ("trailing comma", r#"[status] in ["success",]"#, true),
        ("missing needle", r#"[missing] in ["a"]"#, false),
        ("missing haystack", r#""a" in [missing]"#, false),
        ("haystack is a number", "1 in [count]", false),
        ("number needle in a string", "0 in [count_text]", false),
        ("not in", r#"[status] not in ["error"]"#, true),
        ("not in, member", r#"[status] not in ["success"]"#, false),
        ("missing needle is not in", r#"[missing] not in ["a"]"#, true),
        ("not (x in y)", r#"not "error" in [tags]"#, false),
    ];
    check_table(EVENT, &table);
}

#[test]
fn regex_operators() {
    #[rustfmt::skip]
    let table = [
        ("=~ matches", r"[message] =~ /^\{/", true),
        ("=~ no match", r"[status] =~ /^\{/", false),
        ("=~ finds anywhere", "[status] =~ /cce/", true),
        ("!~ no match", "[status] !~ /^err/", true),
        ("!~ matches", "[status] !~ /^succ/", false),
        ("escaped slash", r"[path] =~ /^\/v1\/chat$/", true),
        ("empty regex", "[status] =~ //", true),
        ("only strings match", "[status_code] =~ /200/", false),
        ("numeric string matches", "[code_text] =~ /^2/", true),
        ("missing field never matches", "[missing] =~ /.*/", false),
        ("missing field !~", "[missing] !~ /x/", true),
        ("literal on the left", r#""abc" =~ /b/"#, true),
        ("case-sensitive by default", "[status] =~ /SUCCESS/", false),
        ("flag i", "[status] =~ /(?i)SUCCESS/", true),
        ("flag i scoped to a group", "[status] =~ /(?i:SUCC)ESS/", false),
        ("^ is the text start without m", "[lines] =~ /^second/", false),
        ("flag m", "[lines] =~ /(?m)^second$/", true),
        ("dot skips newline without s", "[lines] =~ /first.second/", false),
        ("flag s", "[lines] =~ /(?s)first.second/", true),
        ("flag x", "[status] =~ /(?x) suc  cess /", true),
        ("flags combined", "[lines] =~ /(?im)^SECOND$/", true),
        ("unicode class", r"[model] =~ /^\w+-\d/", true),
    ];
    check_table(EVENT, &table);
}

#[test]
fn truthiness_and_exists() {
    #[rustfmt::skip]
    let table = [
        ("true field", "[flag]", true),
        ("false field", "[off]", false),
        ("null field", "[nothing]", false),
        ("missing field", "[missing]", false),
        ("empty string is truthy", "[empty]", true),
        ("zero is truthy", "[zero]", true),
        ("object is truthy", "[obj]", true),
        ("literal true", "true", true),
        ("literal false", "false", false),
        ("literal null", "null", false),
        ("literal string", r#""""#, true),
        ("list literal", "[]", true),
        ("exists", "exists [status]", true),
        ("exists null", "exists [nothing]", true),
        ("exists false", "exists [off]", true),
        ("exists missing", "exists [missing]", false),
        ("exists nested", "exists [a][b][c]", true),
        ("exists below a missing object", "exists [a][x][c]", false),
        ("exists below a string", "exists [status][x]", false),
        ("exists @timestamp the event was stamped with", "exists [@timestamp]", true),
    ];
    check_table(EVENT, &table);
}

#[test]
fn numeric_strings() {
    #[rustfmt::skip]
    let table = [
        ("numeric string == number", "[code_text] == 200", true),
        ("number == numeric string", r#"[status_code] == "200""#, true),
        ("numeric string > number", "[count_text] > 9", true),
        ("numeric string < number", "[count_text] < 9", false),
        ("numeric string == float", "[count_text] == 10.0", true),
        ("padded numeric string", "[padded] == 10", true),
        ("two numeric strings compare as text", r#"[count_text] > "9""#, false),
        ("two numeric string fields compare as text", "[nine_text] > [count_text]", true),
        ("non-numeric string == number", "[status] == 0", false),
        ("non-numeric string != number", "[status] != 0", true),
        ("empty string is not zero", "[empty] == 0", false),
        ("number field against numeric string field", "[count] == [count_text]", true),
        ("integer == float", "[count] == 10.0", true),
        ("float literal == integer field", "10.00 == [count]", true),
    ];
    check_table(EVENT, &table);
}

#[test]
fn field_paths() {
    #[rustfmt::skip]
    let table = [
        ("top level", r#"[status] == "success""#, true),
        ("nested", "[a][b][c] == 5", true),
        ("nested object is not a number", "[a][b] == 5", false),
        ("below a number", "[a][b][c][d]", false),
        ("missing top level == ", "[missing] == 1", false),
        ("missing top level !=", "[missing] != 1", true),
        ("missing < ", "[missing] < 1", false),
        ("missing >= ", "[missing] >= 1", false),
        ("missing is not null", "[missing] == null", false),
        ("two missing fields are not equal", "[missing] == [other]", false),
        ("missing nested", "[a][x][c] == 5", false),
        ("dots are part of the key", r#"[log.level] == "info""#, true),
        ("dots do not nest", "[a.b.c] == 5", false),
        ("spaces are part of the key", r#"[ a ] == "spaced""#, true),
        ("metadata", r#"[@metadata][beat] == "filebeat""#, true),
        ("metadata is not in the fields", r#"exists [@metadata][missing]"#, false),
        ("metadata root is not a value", "exists [@metadata]", false),
        ("field on both sides", "[a][b][c] == [a][b][c]", true),
        ("array index is not a path step", "exists [codes][0]", false),
    ];
    check_table(EVENT, &table);
}

#[test]
fn metadata_comes_from_the_decoded_event() {
    let beats = event(r#"{"message": "x", "@metadata": {"beat": "filebeat"}}"#);
    assert!(compile(r#"[@metadata][beat] == "filebeat""#).matches(&beats));
    assert!(!compile("exists [@metadata][beat]").matches(&event(r#"{"message": "x"}"#)));
}

#[test]
fn precedence_and_associativity() {
    // (name, source, the same condition written with explicit grouping, its canonical print)
    #[rustfmt::skip]
    let table = [
        ("and binds tighter than or", "[a] or [b] and [c]", "[a] or ([b] and [c])", "[a] or [b] and [c]"),
        ("and before or on the left", "[a] and [b] or [c]", "([a] and [b]) or [c]", "[a] and [b] or [c]"),
        ("or chains are flat", "[a] or [b] or [c]", "[a] or [b] or [c]", "[a] or [b] or [c]"),
        ("and chains are flat", "[a] and [b] and [c]", "[a] && [b] && [c]", "[a] and [b] and [c]"),
        ("grouped or keeps its group", "([a] or [b]) or [c]", "([a] || [b]) || [c]", "([a] or [b]) or [c]"),
        ("grouped and keeps its group", "[a] and ([b] and [c])", "[a] and ([b] and [c])", "[a] and ([b] and [c])"),
        ("grouping overrides", "([a] or [b]) and [c]", "([a] or [b]) and [c]", "([a] or [b]) and [c]"),
        ("not binds tighter than and", "not [a] and [b]", "(not [a]) and [b]", "not [a] and [b]"),
        ("not binds tighter than or", "![a] or [b]", "(![a]) or [b]", "not [a] or [b]"),
        ("not of a group", "not ([a] and [b])", "!([a] && [b])", "not ([a] and [b])"),
        ("not covers a comparison", "not [a] == 1", "not ([a] == 1)", "not [a] == 1"),
        ("not not", "not not [a]", "not (not [a])", "not not [a]"),
        ("redundant parentheses vanish", "(([a]))", "[a]", "[a]"),
        ("!~ is not over =~", "[a] !~ /x/", "not [a] =~ /x/", "[a] !~ /x/"),
        ("not in is not in", "[a] not in [b]", "not ([a] in [b])", "[a] not in [b]"),
        ("comparison inside and", "[a] == 1 and [b] > 2", "([a] == 1) and ([b] > 2)", "[a] == 1 and [b] > 2"),
        ("symbols and words mix", "[a] && [b] or ![c]", "([a] and [b]) || (not [c])", "[a] and [b] or not [c]"),
    ];
    for (name, source, grouped, printed) in table {
        let condition = compile(source);
        assert_eq!(condition, compile(grouped), "{name}");
        assert_eq!(condition.to_string(), printed, "{name}");
        assert_round_trip(name, &condition);
    }
    assert_ne!(
        compile("[a] or [b] and [c]"),
        compile("([a] or [b]) and [c]")
    );
    assert_ne!(compile("not [a] and [b]"), compile("not ([a] and [b])"));
    #[rustfmt::skip]
    let table = [
        ("and before or, evaluated", "true or false and false", true),
        ("not before and, evaluated", "not false and false", false),
        ("grouping changes the result", "(true or false) and false", false),
    ];
    check_table(EVENT, &table);
}

#[test]
fn string_escapes() {
    #[rustfmt::skip]
    let table = [
        ("double-quoted", r#""abc""#, "abc"),
        ("single-quoted", "'abc'", "abc"),
        ("empty", r#""""#, ""),
        ("escaped double quote", r#""a\"b""#, "a\"b"),
        ("escaped single quote", r"'a\'b'", "a'b"),
        ("other quote needs no escape", r#"'say "hi"'"#, "say \"hi\""),
        ("apostrophe in double quotes", r#""it's""#, "it's"),
        ("escaped backslash", r#""a\\b""#, "a\\b"),
        ("\\n", r#""line\nnext""#, "line\nnext"),
        ("\\t", r#""a\tb""#, "a\tb"),
        ("other escapes drop the backslash", r#""\r\d\/""#, "rd/"),
        ("no unicode escapes", r#""\u0041""#, "u0041"),
        ("raw newline kept", "\"a\nb\"", "a\nb"),
        ("unicode", r#""é✓ 日本""#, "é✓ 日本"),
        ("operators inside a string", r#""a == b and (c)""#, "a == b and (c)"),
        ("brackets inside a string", r#""[a]""#, "[a]"),
    ];
    for (name, source, expected) in table {
        let condition = compile(source);
        let literal = Expr::Truthy(Operand::Literal(Value::String(expected.into())));
        assert_eq!(condition.expr, literal, "{name}");
        assert_round_trip(name, &condition);
        let event = event(&serde_json::json!({ "s": expected }).to_string());
        assert!(
            compile(&format!("[s] == {source}")).matches(&event),
            "{name}"
        );
    }
}

#[test]
fn printer_canonical_forms() {
    #[rustfmt::skip]
    let table = [
        ("single quotes become double", "[a] == 'x'", r#"[a] == "x""#),
        ("quotes and backslashes escaped", r#"[a] == 'q"\\'"#, r#"[a] == "q\"\\""#),
        ("newline and tab escaped", "[a] == \"x\ny\tz\"", r#"[a] == "x\ny\tz""#),
        ("symbols become words", "![a] && [b] || [c]", "not [a] and [b] or [c]"),
        ("spacing normalised", "[a]>=1", "[a] >= 1"),
        ("nil is null", "[a] == nil", "[a] == null"),
        ("integers stay integers", "[a] == -0", "[a] == 0"),
        ("floats keep a fraction", "[a] == 1.0", "[a] == 1.0"),
        ("exponents", "[a] == 2.5E3", "[a] == 2500.0"),
        ("lists", "[a] in [ 'x' ,2,]", r#"[a] in ["x", 2]"#),
        ("empty list", "[a] in [ ]", "[a] in []"),
        ("slashes in a regex", r"[a] =~ /a\/b/", r"[a] =~ /a\/b/"),
        ("backslashes in a regex", r"[a] =~ /\d\\x/", r"[a] =~ /\d\\x/"),
        ("backslash before an escaped slash", r"[a] =~ /a\\\//", r"[a] =~ /a\\\//"),
        ("exists", "exists   [a][b]", "exists [a][b]"),
        ("metadata path", "[@metadata][beat]", "[@metadata][beat]"),
    ];
    for (name, source, printed) in table {
        let condition = compile(source);
        assert_eq!(condition.to_string(), printed, "{name}");
        assert_eq!(
            condition.source(),
            source,
            "{name}: the source is kept as written"
        );
        assert_round_trip(name, &condition);
    }
}

#[test]
fn errors_name_the_problem_and_its_column() {
    const ENDS: &str = "the condition ends where a field or value was expected";
    const OPERATORS: &str = "unknown operator (use ==, !=, <, <=, >, >=, =~, !~, in, and, or, not)";
    const LIST: &str = "a list holds strings or numbers: [\"a\", \"b\"]";
    // (name, source, message, column): the column is 1-based, as the message prints it.
    #[rustfmt::skip]
    let table = [
        ("empty", "", ENDS, 1),
        ("only spaces", "   ", ENDS, 4),
        ("missing right operand", "[a] ==", ENDS, 7),
        ("missing right operand, then space", "[a] == ", ENDS, 8),
        ("dangling not", "not", ENDS, 4),
        ("dangling and", "[a] and", ENDS, 8),
        ("unclosed field", "[a", "a `[` has no matching `]`", 1),
        ("unclosed second segment", "[a][b", "a `[` has no matching `]`", 4),
        ("empty segment", "[a][] == 1", "invalid field reference `[a][]`: a segment `[]` is empty", 1),
        ("nested bracket", "[a[b] == 1", "invalid field reference `[a[b]`: nested `[` inside a segment", 1),
        ("unterminated double quote", "[a] == \"x", "unterminated string", 8),
        ("unterminated single quote", "'x", "unterminated string", 1),
        ("escaped closing quote", r#"[a] == "x\""#, "unterminated string", 8),
        ("unterminated regex", "[a] =~ /x", "unterminated regex: add a closing `/`", 8),
        ("escaped closing slash", r"[a] =~ /x\/", "unterminated regex: add a closing `/`", 8),
        ("single =", "[a] = 1", OPERATORS, 5),
        ("single &", "[a] & [b]", OPERATORS, 5),
        ("single |", "[a] | [b]", OPERATORS, 5),
        ("bad number", "[a] == 1.2.3", "bad number `1.2.3`", 8),
        ("lone minus", "[a] == -", "bad number `-`", 8),
        ("exponent without digits", "[a] == 1e", "bad number `1e`", 8),
        ("number running into a minus", "[a] == 1-2", "bad number `1-2`", 8),
        ("number too large", "[a] == 1e309", "number `1e309` is too large", 8),
        ("negative number too large", "[a] == -1e400", "number `-1e400` is too large", 8),
        ("number too large in a list", "[a] in [1, 1e999]", "number `1e999` is too large", 12),
        ("unexpected character", "[a] == #", "unexpected character `#`", 8),
        ("stray ]", "[a] == 1]", "unexpected character `]`", 9),
        ("non-ASCII character", "[a] == x✓", "unexpected character `✓`", 9),
        ("trailing )", "[a] == 1 )", "unexpected `)` after a complete condition", 10),
        ("two operands", "[a] [b]", "unexpected field [b] after a complete condition", 5),
        ("chained comparison", "1 == 1 == 1", "unexpected `==` after a complete condition", 8),
        ("regex flags after the slash", "[a] =~ /x/i", "unexpected `i` after a complete condition", 11),
        ("unclosed (", "([a]", "expected `)`", 5),
        ("something else before )", "([a] [b])", "expected `)`", 6),
        ("exists without a field", "exists \"a\"", "`exists` needs a field such as [a][b]", 8),
        ("exists at the end", "exists", "`exists` needs a field such as [a][b]", 7),
        ("=~ without a regex", "[a] =~ \"x\"", "`=~` needs a regex such as /^\\{/", 8),
        ("!~ without a regex", "[a] !~ [b]", "`!~` needs a regex such as /^\\{/", 8),
        ("not without in", "[a] not [b]", "expected `in` after `not`", 9),
        ("bare word on the left", "status == 1", "`status` is not a value: write a field as [status] or a string as \"status\"", 1),
        ("bare word on the right", "[a] == yes", "`yes` is not a value: write a field as [yes] or a string as \"yes\"", 8),
        ("exists as a value", "[a] == exists", "`exists` is not a value: write a field as [exists] or a string as \"exists\"", 8),
        ("operator for an operand", "[a] == ==", "expected a field or value, found `==`", 8),
        ("starts with )", ")", "expected a field or value, found `)`", 1),
        ("regex as an operand", "[a] == /x/", "expected a field or value, found regex /x/", 8),
        ("and as an operand", "and", "expected a field or value, found `and`", 1),
        ("comma as an operand", ", [a]", "expected a field or value, found `,`", 1),
        ("field in a list", "[a] in [\"x\", [b]]", LIST, 14),
        ("bool in a list", "[a] in [1, true]", LIST, 12),
        ("unclosed list", "[a] in [1", "expected `,` or `]` in the list", 10),
        ("unclosed list after a comma", "[a] in [1,", LIST, 11),
        ("list without commas", "[a] in [\"x\" \"y\"]", "expected `,` or `]` in the list", 13),
    ];
    for (name, source, message, column) in table {
        let error = Condition::compile(source).expect_err(name);
        assert_eq!(error.message, message, "{name}: {source:?}");
        assert_eq!(error.offset + 1, column, "{name}: {source:?}");
        assert_eq!(
            error.to_string(),
            format!("{message} at character {column}"),
            "{name}"
        );
    }
}

#[test]
fn bad_regex_reports_the_regex_error_at_the_regex() {
    for (source, pattern, column) in [("[a] =~ /(/", "(", 8), ("[a] !~ /x{2,1}/", "x{2,1}", 8)] {
        let error = Condition::compile(source).unwrap_err();
        let prefix = format!("bad regex /{pattern}/: ");
        assert!(error.message.starts_with(&prefix), "{source}: {error}");
        assert_eq!(error.offset + 1, column, "{source}");
    }
}
