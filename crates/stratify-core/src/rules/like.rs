//! SQL `LIKE` semantics, case-sensitive: `%` matches any run (also empty),
//! `_` exactly one character; no escape character. The SQL compiler turns
//! patterns into `GLOB` for SQLite (whose `LIKE` ignores ASCII case).

/// Whether `text` matches `pattern`.
pub fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Iterative matcher with backtracking to the last '%': O(len(t)·len(p)) worst case.
    let (mut ti, mut pi) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] == t[ti])) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '%')
}

/// The `GLOB` pattern matching exactly what `LIKE pattern` matches
/// (case-sensitively): `%`→`*`, `_`→`?`, and GLOB's own `*?[` are bracketed.
pub fn to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in pattern.chars() {
        match c {
            '%' => out.push('*'),
            '_' => out.push('?'),
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_matches_sql_semantics_case_sensitively() {
        assert!(like("California", "Cal%"));
        assert!(like("California", "%nia"));
        assert!(like("California", "C_lifornia"));
        assert!(like("", "%"));
        assert!(!like("california", "Cal%"));
        assert!(!like("Cal", "Cal_"));
        assert!(like("a%b", "a%b"));
        assert!(like("abcabcabd", "%abd"));
        assert!(like("ß日本", "_日%"));
    }

    #[test]
    fn glob_translation_escapes_glob_metacharacters() {
        assert_eq!(to_glob("a%b_c*d?e[f"), "a*b?c[*]d[?]e[[]f");
    }
}
