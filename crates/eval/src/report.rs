//! Results: serde structs written as JSON, a readable table, and the router comparison table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Note attached to results that contain the ESFT tasks.
pub const ESFT_NOTE: &str = "esft_law and esft_summary are scored offline with character-level ROUGE-L F1 against the reference answers; the paper (following ESFT) used an LLM judge (GPT-4-class, score 0-10 divided by 10), so these numbers are not comparable with the paper's";

/// One item's outcome, kept for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// Item id.
    pub id: String,
    /// Its score (1/0 for accuracy-style metrics, the F1 for ROUGE-L, the NLL for perplexity).
    pub score: f64,
    /// The generated completion (generation tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// What was extracted from it (answer, code, chosen option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted: Option<String>,
    /// The gold answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Anything else (sandbox outcome, per-choice log-likelihoods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One task's (or one perplexity domain's) result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Task name (`ppl_<domain>` for the perplexity domains).
    pub task: String,
    /// Domain.
    pub domain: String,
    /// Metric name.
    pub metric: String,
    /// The score: a fraction in [0, 1] for accuracy-type metrics, a perplexity for `ppl_*`.
    pub score: f64,
    /// Whether larger is better.
    pub higher_is_better: bool,
    /// Items scored.
    pub n: usize,
    /// Secondary figures (strict-match accuracy, per-subject accuracy, bits per byte, …).
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
    /// How the task was run (prompting, shots, data file).
    pub setup: String,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Per-item outcomes.
    #[serde(default)]
    pub items: Vec<ItemRecord>,
}

/// All results of one evaluation run (one router setting).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Checkpoint directory.
    pub checkpoint: String,
    /// Routing label, e.g. `topk` / `seqtopk`.
    pub router: String,
    /// Expert budget per token.
    pub k: Option<usize>,
    /// Whether the checkpoint's own routing was kept (no override).
    pub router_from_checkpoint: bool,
    /// Data directory.
    pub data_dir: String,
    /// Items per task limit, if any.
    pub limit: Option<usize>,
    /// Chat template applied to prompts (`none` for raw prompts).
    pub chat_template: String,
    /// Task results, in the order run.
    pub results: Vec<TaskResult>,
    /// Mean score (×100) over the higher-is-better tasks (perplexities excluded).
    pub average: Option<f64>,
    /// Caveats the numbers need.
    pub notes: Vec<String>,
}

impl EvalReport {
    /// Recompute [`EvalReport::average`] from the results.
    pub fn update_average(&mut self) {
        let scores: Vec<f64> = self
            .results
            .iter()
            .filter(|r| r.higher_is_better)
            .map(|r| r.score * 100.0)
            .collect();
        self.average =
            (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
    }

    /// A readable fixed-width table: task, domain, metric, n, score.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 5]> = vec![[
            "task".into(),
            "domain".into(),
            "metric".into(),
            "n".into(),
            "score".into(),
        ]];
        for r in &self.results {
            rows.push([
                r.task.clone(),
                r.domain.clone(),
                r.metric.clone(),
                r.n.to_string(),
                format_score(r),
            ]);
        }
        if let Some(avg) = self.average {
            rows.push([
                "average".into(),
                String::new(),
                "mean ×100".into(),
                String::new(),
                format!("{avg:.2}"),
            ]);
        }
        let widths: Vec<usize> = (0..5)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "router {}{} on {}\n",
            self.router,
            self.k.map_or(String::new(), |k| format!(" K={k}")),
            self.checkpoint
        );
        for (i, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if c >= 3 {
                        format!("{s:>w$}", w = widths[c])
                    } else {
                        format!("{s:<w$}", w = widths[c])
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * 4));
                out.push('\n');
            }
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// A score as the tables show it: ×100 with two decimals, perplexities as they are.
pub fn format_score(r: &TaskResult) -> String {
    if r.higher_is_better {
        format!("{:.2}", r.score * 100.0)
    } else {
        format!("{:.3}", r.score)
    }
}

/// The paper-style comparison: one row per router × K, one column per task, then the average
/// (×100, higher-is-better tasks only). Perplexity columns are marked `(↓)`.
pub fn compare_markdown(reports: &[EvalReport]) -> String {
    let mut columns: Vec<(String, bool)> = Vec::new();
    for rep in reports {
        for r in &rep.results {
            if !columns.iter().any(|(c, _)| c == &r.task) {
                columns.push((r.task.clone(), r.higher_is_better));
            }
        }
    }
    let mut out = String::new();
    out.push_str("| router | K |");
    for (c, hib) in &columns {
        out.push_str(&format!(" {c}{} |", if *hib { "" } else { " (↓)" }));
    }
    out.push_str(" average |\n|---|---:|");
    for _ in &columns {
        out.push_str("---:|");
    }
    out.push_str("---:|\n");
    for rep in reports {
        out.push_str(&format!(
            "| {} | {} |",
            rep.router,
            rep.k.map_or("-".to_string(), |k| k.to_string())
        ));
        for (c, _) in &columns {
            let cell = rep
                .results
                .iter()
                .find(|r| &r.task == c)
                .map_or("-".to_string(), format_score);
            out.push_str(&format!(" {cell} |"));
        }
        out.push_str(&format!(
            " {} |\n",
            rep.average.map_or("-".to_string(), |a| format!("{a:.2}"))
        ));
    }
    let n = reports
        .iter()
        .flat_map(|r| r.results.iter().map(|t| t.n))
        .max();
    let mut notes: Vec<&String> = reports.iter().flat_map(|r| r.notes.iter()).collect();
    notes.dedup();
    out.push('\n');
    if let Some(first) = reports.first() {
        out.push_str(&format!(
            "Checkpoint `{}`, data `{}`, chat template `{}`{}. Scores ×100 (accuracy, exact match, pass@1, ROUGE-L F1); `ppl_*` are perplexities (lower is better) and are not in the average.\n",
            first.checkpoint,
            first.data_dir,
            first.chat_template,
            match (first.limit, n) {
                (Some(l), _) => format!(", at most {l} items per task"),
                (None, Some(n)) => format!(", up to {n} items per task"),
                _ => String::new(),
            }
        ));
    }
    for note in notes {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(task: &str, score: f64, hib: bool) -> TaskResult {
        TaskResult {
            task: task.into(),
            domain: "math".into(),
            metric: "m".into(),
            score,
            higher_is_better: hib,
            n: 2,
            extra: BTreeMap::new(),
            setup: String::new(),
            seconds: 0.0,
            items: vec![],
        }
    }

    fn report(router: &str, k: usize, results: Vec<TaskResult>) -> EvalReport {
        let mut r = EvalReport {
            checkpoint: "ck".into(),
            router: router.into(),
            k: Some(k),
            router_from_checkpoint: false,
            data_dir: "data/samples".into(),
            limit: Some(2),
            chat_template: "none".into(),
            results,
            average: None,
            notes: vec![ESFT_NOTE.into()],
        };
        r.update_average();
        r
    }

    #[test]
    fn average_skips_perplexity_and_table_lists_everything() {
        let r = report(
            "topk",
            2,
            vec![
                result("gsm8k", 0.5, true),
                result("mbpp", 0.25, true),
                result("ppl_math", 12.5, false),
            ],
        );
        assert_eq!(r.average, Some(37.5));
        let t = r.table();
        assert!(t.contains("gsm8k") && t.contains("50.00") && t.contains("12.500"));
        assert!(t.contains("37.50"));
        assert!(t.contains("ROUGE-L"));
    }

    #[test]
    fn compare_table_has_one_row_per_setting() {
        let a = report(
            "topk",
            2,
            vec![result("gsm8k", 0.5, true), result("ppl_math", 9.0, false)],
        );
        let b = report("seqtopk", 2, vec![result("gsm8k", 0.75, true)]);
        let md = compare_markdown(&[a, b]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| router | K | gsm8k | ppl_math (↓) | average |");
        assert_eq!(lines[2], "| topk | 2 | 50.00 | 9.000 | 50.00 |");
        assert_eq!(lines[3], "| seqtopk | 2 | 75.00 | - | 75.00 |");
        assert_eq!(md.matches("Note:").count(), 1);
    }
}
