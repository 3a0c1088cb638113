//! ROUGE-L (longest common subsequence F-measure), character level for Chinese.
//!
//! The ESFT law and summary tasks are Chinese. Word segmentation would need a dictionary
//! segmenter, so they are scored on characters, the usual offline choice for Chinese ROUGE:
//! every non-whitespace character is a unit. ASCII letters and digits are grouped into words so
//! that an English or numeric answer is not rewarded for sharing single letters.

/// Units ROUGE-L compares: runs of ASCII alphanumerics form one unit (lower-cased), every other
/// non-whitespace character (a Chinese character, a punctuation mark) is its own unit.
pub fn units(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Length of the longest common subsequence (O(n·m) time, O(m) memory).
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L precision, recall and F1 of a prediction against one reference.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RougeL {
    /// LCS / prediction length.
    pub precision: f64,
    /// LCS / reference length.
    pub recall: f64,
    /// Harmonic mean of the two (0 when either is 0).
    pub f1: f64,
}

/// ROUGE-L of `prediction` against `reference` on [`units`].
pub fn rouge_l(prediction: &str, reference: &str) -> RougeL {
    let (p, r) = (units(prediction), units(reference));
    if p.is_empty() || r.is_empty() {
        return RougeL {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
    }
    let l = lcs_len(&p, &r) as f64;
    let precision = l / p.len() as f64;
    let recall = l / r.len() as f64;
    let f1 = if l == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    RougeL {
        precision,
        recall,
        f1,
    }
}

/// The best ROUGE-L F1 over several references (0 for none).
pub fn rouge_l_max(prediction: &str, references: &[String]) -> f64 {
    references
        .iter()
        .map(|r| rouge_l(prediction, r).f1)
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_split_into_characters() {
        assert_eq!(units("驳回 原告"), vec!["驳", "回", "原", "告"]);
        assert_eq!(units("费200元, OK"), vec!["费", "200", "元", ",", "ok"]);
    }

    #[test]
    fn lcs_by_hand() {
        assert_eq!(lcs_len(&[1, 2, 3, 4], &[2, 4, 3]), 2);
        assert_eq!(lcs_len::<u8>(&[], &[1]), 0);
        assert_eq!(lcs_len(b"ABCBDAB", b"BDCABA"), 4);
    }

    #[test]
    fn rouge_l_hand_made_cases() {
        // Identical: 1.
        let r = rouge_l("驳回原告的诉讼请求", "驳回原告的诉讼请求");
        assert!((r.f1 - 1.0).abs() < 1e-12);
        // Prediction "驳回请求" (4 chars) vs reference "驳回原告的诉讼请求" (9 chars): LCS 4.
        let r = rouge_l("驳回请求", "驳回原告的诉讼请求");
        assert!((r.precision - 1.0).abs() < 1e-12);
        assert!((r.recall - 4.0 / 9.0).abs() < 1e-12);
        assert!((r.f1 - 2.0 * (4.0 / 9.0) / (1.0 + 4.0 / 9.0)).abs() < 1e-12);
        // Disjoint and empty.
        assert_eq!(rouge_l("准予离婚", "驳回起诉").f1, 0.0);
        assert_eq!(rouge_l("", "驳回").f1, 0.0);
        // Best reference wins.
        let refs = vec!["完全不同".to_string(), "准予离婚".to_string()];
        assert!((rouge_l_max("准予离婚", &refs) - 1.0).abs() < 1e-12);
        assert_eq!(rouge_l_max("x", &[]), 0.0);
    }
}
