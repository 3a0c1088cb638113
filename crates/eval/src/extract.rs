//! Answer extraction and normalisation, following what the common harnesses do.
//!
//! - GSM8K: lm-evaluation-harness's `gsm8k` filters: *strict-match* takes the number after `#### `,
//!   *flexible-extract* takes the **last** match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`; both sides then
//!   drop `,`, `$`, everything up to `#### ` and a final `.` before exact (case-insensitive) match.
//! - MATH-500: the content of the last `\boxed{…}` (or `\fbox{…}`; Minerva's "The final answer is
//!   …" as a fallback) on both sides, compared after a light normalisation in the spirit of
//!   Hendrycks et al.'s `strip_string` (see [`normalize_math_answer`]).
//! - Code: completions are cut at the first stop sequence, and MBPP answers are taken out of
//!   `[BEGIN] … [DONE]` or a Markdown code fence.

use std::sync::LazyLock;

use regex::Regex;

/// What GSM8K extraction produces when nothing matches (lm-eval's fallback string).
pub const INVALID: &str = "[invalid]";

static GSM8K_STRICT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"#### (\-?[0-9\.\,]+)").expect("valid regex"));
static GSM8K_FLEXIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(-?[$0-9.,]{2,})|(-?[0-9]+)").expect("valid regex"));

/// lm-eval's `regexes_to_ignore` for GSM8K, then lower case (`ignore_case: true`).
pub fn gsm8k_normalize(s: &str) -> String {
    let s = match s.rfind("#### ") {
        Some(i) => &s[i + 5..],
        None => s,
    };
    let mut out: String = s.chars().filter(|&c| c != ',' && c != '$').collect();
    if out.ends_with('.') {
        out.pop();
    }
    out.trim().to_lowercase()
}

/// The gold answer of a GSM8K reference solution: what follows its last `####`, normalised.
pub fn gsm8k_reference(answer: &str) -> String {
    gsm8k_normalize(answer)
}

/// Strict extraction: the number after the first `#### `, or [`INVALID`].
pub fn gsm8k_strict(generation: &str) -> String {
    GSM8K_STRICT
        .captures(generation)
        .and_then(|c| c.get(1))
        .map_or_else(|| INVALID.to_string(), |m| m.as_str().to_string())
}

/// Flexible extraction: the last number-like span of the generation, or [`INVALID`].
pub fn gsm8k_flexible(generation: &str) -> String {
    GSM8K_FLEXIBLE
        .captures_iter(generation)
        .last()
        .and_then(|c| c.get(1).or_else(|| c.get(2)))
        .map_or_else(|| INVALID.to_string(), |m| m.as_str().to_string())
}

/// Exact match of an extracted GSM8K answer against the normalised gold answer.
pub fn gsm8k_match(extracted: &str, gold: &str) -> bool {
    extracted != INVALID && gsm8k_normalize(extracted) == gsm8k_normalize(gold)
}

/// Content of the last `\boxed{…}` / `\fbox{…}` (balanced braces) or `\boxed x` in `text`.
pub fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|tag| text.rfind(tag).map(|i| (i, tag.len())))
        .max_by_key(|&(i, _)| i)?;
    let rest = &text[start.0 + start.1..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut depth = 1usize;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].to_string());
                    }
                }
                _ => {}
            }
        }
        None
    } else if let Some(body) = rest.strip_prefix(' ') {
        let end = body.find(['$', '\n']).unwrap_or(body.len());
        let ans = body[..end].trim();
        (!ans.is_empty()).then(|| ans.to_string())
    } else {
        None
    }
}

/// The answer a MATH generation gives: the last `\boxed{}`, else Minerva's "final answer is X".
pub fn math_answer(generation: &str) -> Option<String> {
    if let Some(b) = last_boxed(generation) {
        return Some(b);
    }
    let key = "final answer is";
    let i = generation.rfind(key)?;
    let rest = generation[i + key.len()..].trim_start();
    // "The final answer is $x$. I hope it is correct." — take the math span, else up to ". ".
    let ans = if let Some(r) = rest.strip_prefix('$') {
        r.split('$').next().unwrap_or("")
    } else {
        rest.split(['\n'])
            .next()
            .unwrap_or("")
            .trim_end_matches('.')
    };
    let ans = ans.trim();
    (!ans.is_empty()).then(|| ans.to_string())
}

/// Replace every `\cmd{x}` by `x` (for `\text`, `\textbf`, `\mbox`, `\mathrm`).
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(cmd) {
        let after = &rest[i + cmd.len()..];
        if let Some(body) = after.strip_prefix('{') {
            let mut depth = 1usize;
            let mut end = None;
            for (j, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if let Some(j) = end {
                out.push_str(&rest[..i]);
                out.push_str(&body[..j]);
                rest = &body[j + 1..];
                continue;
            }
        }
        out.push_str(&rest[..i + cmd.len()]);
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `\frac12` → `\frac{1}{2}`, `\frac1{2}` → `\frac{1}{2}` (Hendrycks' `fix_fracs`).
fn fix_fracs(s: &str) -> String {
    let parts: Vec<&str> = s.split("\\frac").collect();
    let mut out = parts[0].to_string();
    for part in &parts[1..] {
        out.push_str("\\frac");
        let mut chars = part.chars();
        match (chars.next(), chars.next()) {
            (Some('{'), _) | (None, _) => out.push_str(part),
            (Some(a), None) => out.push_str(&format!("{{{a}}}")),
            (Some(a), Some('{')) => {
                out.push_str(&format!("{{{a}}}"));
                out.push_str(&part[a.len_utf8()..]);
            }
            (Some(a), Some(b)) => {
                out.push_str(&format!("{{{a}}}{{{b}}}"));
                out.push_str(&part[a.len_utf8() + b.len_utf8()..]);
            }
        }
    }
    out
}

/// `\sqrt3` → `\sqrt{3}` (Hendrycks' `fix_sqrt`).
fn fix_sqrt(s: &str) -> String {
    let parts: Vec<&str> = s.split("\\sqrt").collect();
    let mut out = parts[0].to_string();
    for part in &parts[1..] {
        out.push_str("\\sqrt");
        match part.chars().next() {
            Some(c) if c != '{' => {
                out.push_str(&format!("{{{c}}}"));
                out.push_str(&part[c.len_utf8()..]);
            }
            _ => out.push_str(part),
        }
    }
    out
}

/// Light normalisation of a MATH answer so that equivalent spellings compare equal:
/// `\text{}`/`\mbox{}` unwrapped, `\left`/`\right`, spacing commands, degrees, `$`, `%` and
/// whitespace removed, `dfrac`/`tfrac` → `frac`, `\frac12` and `\sqrt3` braced, a leading
/// `x=` dropped, `a/b` of integers → `\frac{a}{b}`, thousands separators dropped, decimals
/// written canonically (`90.0` → `90`, `.5` → `0.5`) and a trailing `.` dropped.
pub fn normalize_math_answer(answer: &str) -> String {
    let mut s = answer.trim().replace('\n', "");
    for cmd in ["\\text", "\\textbf", "\\mbox", "\\mathrm"] {
        s = unwrap_command(&s, cmd);
    }
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\$", ""),
        ("$", ""),
        ("dfrac", "frac"),
        ("tfrac", "frac"),
        ("\\dots", "\\ldots"),
    ] {
        s = s.replace(from, to);
    }
    s.retain(|c| !c.is_whitespace());
    while s.ends_with('.') {
        s.pop();
    }
    // "x=5" → "5" (only a short left-hand side, as Hendrycks does).
    if let Some((lhs, rhs)) = s.split_once('=')
        && lhs.chars().count() <= 2
        && !rhs.contains('=')
    {
        s = rhs.to_string();
    }
    s = fix_sqrt(&fix_fracs(&s));
    // Thousands separators between digit groups: "1,000" → "1000".
    if s.contains(',')
        && s.split(',')
            .skip(1)
            .all(|g| g.len() == 3 && g.chars().all(|c| c.is_ascii_digit()))
        && s.split(',').next().is_some_and(|g| {
            !g.is_empty()
                && g.len() <= 3
                && g.trim_start_matches('-')
                    .chars()
                    .all(|c| c.is_ascii_digit())
        })
    {
        s.retain(|c| c != ',');
    }
    if let Some((a, b)) = s.split_once('/')
        && !a.is_empty()
        && !b.is_empty()
        && a.trim_start_matches('-')
            .chars()
            .all(|c| c.is_ascii_digit())
        && b.chars().all(|c| c.is_ascii_digit())
    {
        s = if let Some(a) = a.strip_prefix('-') {
            format!("-\\frac{{{a}}}{{{b}}}")
        } else {
            format!("\\frac{{{a}}}{{{b}}}")
        };
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    if s.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && s.contains('.')
        && let Ok(v) = s.parse::<f64>()
    {
        s = format_number(v);
    }
    s
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Whether two MATH answers agree after [`normalize_math_answer`].
pub fn math_equal(prediction: &str, reference: &str) -> bool {
    let (p, r) = (
        normalize_math_answer(prediction),
        normalize_math_answer(reference),
    );
    !p.is_empty() && p == r
}

/// Cut `text` at the earliest occurrence of any stop sequence.
pub fn truncate_at_stop<'a>(text: &'a str, stops: &[impl AsRef<str>]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|s| {
            let s = s.as_ref();
            (!s.is_empty()).then(|| text.find(s)).flatten()
        })
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The code of an MBPP answer: what precedes `[DONE]`, out of a Markdown fence if there is one,
/// and without a leading `[BEGIN]`.
pub fn mbpp_code(generation: &str) -> String {
    let text = truncate_at_stop(generation, &["[DONE]"]);
    let text = text.trim_start().strip_prefix("[BEGIN]").unwrap_or(text);
    if let Some(i) = text.find("```") {
        let body = &text[i + 3..];
        // Skip the language tag line.
        let body = body.split_once('\n').map_or("", |(_, b)| b);
        let end = body.find("```").unwrap_or(body.len());
        return body[..end].to_string();
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_reference_takes_the_number_after_hashes() {
        let answer = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18";
        assert_eq!(gsm8k_reference(answer), "18");
        assert_eq!(gsm8k_reference("#### 1,234"), "1234");
        assert_eq!(gsm8k_reference("x\n#### -5"), "-5");
    }

    #[test]
    fn gsm8k_flexible_takes_the_last_number() {
        let g = " She has 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = $18.\n\nQuestion: next";
        assert_eq!(gsm8k_flexible(g), "$18.");
        assert!(gsm8k_match(&gsm8k_flexible(g), "18"));
        // A lone digit is found by the second alternative.
        assert_eq!(gsm8k_flexible("the answer is 7"), "7");
        assert_eq!(gsm8k_flexible("costs 1,200 dollars"), "1,200");
        assert!(gsm8k_match(&gsm8k_flexible("costs 1,200 dollars"), "1200"));
        assert_eq!(gsm8k_flexible("went down by -3 degrees"), "-3");
        assert_eq!(gsm8k_flexible("no digits here"), INVALID);
        assert!(!gsm8k_match(INVALID, "18"));
        // Wrong answers do not match.
        assert!(!gsm8k_match(&gsm8k_flexible("so 17 dollars"), "18"));
    }

    #[test]
    fn gsm8k_strict_needs_hashes() {
        assert_eq!(gsm8k_strict("reasoning... #### 42\n"), "42");
        assert_eq!(gsm8k_strict("the answer is 42"), INVALID);
        assert!(gsm8k_match(&gsm8k_strict("#### 3,000."), "3000"));
    }

    #[test]
    fn boxed_extraction_handles_nesting() {
        let s = "so $\\boxed{\\frac{14}{3}}$ and earlier \\boxed{1}";
        assert_eq!(last_boxed(s).as_deref(), Some("1"));
        let s = "Therefore $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$";
        assert_eq!(
            last_boxed(s).as_deref(),
            Some("\\left( 3, \\frac{\\pi}{2} \\right)")
        );
        assert_eq!(last_boxed("$\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\fbox{x+1}").as_deref(), Some("x+1"));
        assert_eq!(last_boxed("unbalanced \\boxed{3"), None);
        assert_eq!(last_boxed("no box"), None);
    }

    #[test]
    fn minerva_fallback() {
        assert_eq!(
            math_answer("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.")
                .as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(math_answer("nothing"), None);
    }

    #[test]
    fn math_normalisation_equates_spellings() {
        assert!(math_equal(
            "\\left( 3, \\frac{\\pi}{2} \\right)",
            "(3,\\frac{\\pi}{2})"
        ));
        assert!(math_equal("\\dfrac{14}{3}", "\\frac{14}{3}"));
        assert!(math_equal("14/3", "\\frac{14}{3}"));
        assert!(math_equal("\\frac12", "\\frac{1}{2}"));
        assert!(math_equal("90^\\circ", "90"));
        assert!(math_equal("\\text{Evelyn}", "Evelyn"));
        assert!(math_equal("x = 5", "5"));
        assert!(math_equal("2\\sqrt3", "2\\sqrt{3}"));
        assert!(math_equal("1,000", "1000"));
        assert!(math_equal("90.0", "90"));
        assert!(math_equal(".5", "0.5"));
        assert!(math_equal("50\\%", "50"));
        assert!(math_equal("p - q", "p-q"));
        assert!(!math_equal("\\frac{14}{3}", "\\frac{3}{14}"));
        assert!(!math_equal("", ""));
        // A tuple keeps its comma.
        assert_eq!(normalize_math_answer("(1, 2)"), "(1,2)");
    }

    #[test]
    fn stop_sequences_and_mbpp_code() {
        let g = "    return x\n\ndef other():\n    pass";
        assert_eq!(
            truncate_at_stop(g, &["\nclass", "\ndef", "\nif"]),
            "    return x\n"
        );
        assert_eq!(truncate_at_stop("abc", &["zz"]), "abc");
        assert_eq!(
            mbpp_code("\ndef f(x):\n    return x\n[DONE]\nmore"),
            "\ndef f(x):\n    return x\n"
        );
        assert_eq!(
            mbpp_code("```python\ndef f():\n    return 1\n```\n[DONE]"),
            "def f():\n    return 1\n"
        );
    }
}
