//! The task registry: where each task's data lives, how its prompts are built, and what kind of
//! request (generation, multiple choice, greedy continuation, perplexity) it makes.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EvalError;

/// An evaluation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskId {
    /// GSM8K test, 0-shot, exact match of the extracted number (lm-eval flexible-extract).
    Gsm8k,
    /// MATH-500, 0-shot, `\boxed{}` answer equal after normalisation.
    Math500,
    /// HumanEval, 0-shot, pass@1 (greedy) by running the tests in the sandbox.
    Humaneval,
    /// MBPP, 3-shot (the first three items are the shots and are not scored), pass@1.
    Mbpp,
    /// MMLU professional law, international law and jurisprudence: log-likelihood of the answer
    /// letter, accuracy.
    MmluLaw,
    /// ESFT law (Chinese judgement prediction): character-level ROUGE-L F1 against the reference.
    EsftLaw,
    /// ESFT summary (Chinese dialogue summarisation): character-level ROUGE-L F1.
    EsftSummary,
    /// LAMBADA: the last word is the greedy continuation (accuracy).
    Lambada,
    /// Per-domain perplexity on held-out reference text (see [`PPL_SOURCES`]).
    Ppl,
}

/// The `ppl` task's files, in [`PPL_SOURCES`] order.
const PPL_FILES: [&str; 4] = [
    "math/math500_test.jsonl",
    "code/humaneval.jsonl",
    "law/esft_eval_law.jsonl",
    "writing/esft_eval_summary.jsonl",
];

/// Held-out text for the `ppl` task, per domain: `(domain, file, how a record becomes text)`.
/// Each is an evaluation set that the fine-tuning data does not contain (MATH-500 is removed
/// from `math_train.jsonl`; the ESFT eval files are separate from `esft_train_law.jsonl`).
pub const PPL_SOURCES: [(&str, &str, &str); 4] = [
    (
        "math",
        PPL_FILES[0],
        "MATH-500 problem and reference solution (`prompt` + `completion`)",
    ),
    (
        "code",
        PPL_FILES[1],
        "HumanEval prompt and canonical solution",
    ),
    (
        "law",
        PPL_FILES[2],
        "ESFT law eval case and reference judgement (`prompt` + `answers[0]`)",
    ),
    (
        "writing",
        PPL_FILES[3],
        "ESFT summary eval dialogue and reference summary (`prompt` + `answers[0]`)",
    ),
];

/// Number of MBPP items used as the 3-shot examples (taken from the start of the file).
pub const MBPP_SHOTS: usize = 3;

/// How a task's records become items: what [`load_task`] dispatches on.
#[derive(Clone, Copy)]
enum Items {
    /// One generation item per record of the task's file.
    Generate(fn(&Record) -> Result<GenItem, EvalError>),
    /// MBPP: the first [`MBPP_SHOTS`] records are the shots, each later one an item.
    MbppFewShot,
    /// One multiple-choice item per record.
    Choice(fn(&Record) -> Result<ChoiceItem, EvalError>),
    /// One greedy-continuation item per record.
    Greedy(fn(&Record) -> Result<ContinuationItem, EvalError>),
    /// Documents of every [`PPL_SOURCES`] file.
    Perplexity,
}

/// Everything that defines a task, written once: the table [`TASKS`] is what the CLI, the
/// loader and the report read.
pub struct TaskSpec {
    /// The task.
    pub id: TaskId,
    /// The name used on the command line and in results.
    pub name: &'static str,
    /// The domain it measures (math, code, law, writing; `ppl` covers all four).
    pub domain: &'static str,
    /// The metric reported.
    pub metric: &'static str,
    /// Data file(s), relative to the data directory.
    pub files: &'static [&'static str],
    /// New tokens generated per item unless `--max-new-tokens` says otherwise (0: not a
    /// generation task).
    pub max_new_tokens: usize,
    /// Stop sequences of generation tasks (the completion is cut at the first one).
    pub stop: &'static [&'static str],
    /// How a generated answer is scored, for the report's set-up line.
    pub scoring: &'static str,
    items: Items,
}

/// ESFT generation stops at the next user turn or an end-of-text marker.
const ESFT_STOP: &[&str] = &["\n\nUser:", "</s>", "<|im_end|>"];
const ROUGE_SCORING: &str =
    "character-level ROUGE-L F1 against the best reference (offline; the paper used an LLM judge)";
const PASS_AT_1: &str = "pass@1 (greedy): tests run in the Python sandbox";

/// Every task, in table order (the order of [`TaskId::ALL`]).
pub const TASKS: [TaskSpec; 9] = [
    TaskSpec {
        id: TaskId::Gsm8k,
        name: "gsm8k",
        domain: "math",
        metric: "exact_match",
        files: &["math/gsm8k_test.jsonl"],
        max_new_tokens: 256,
        // lm-eval gsm8k `until`.
        stop: &["Question:", "</s>", "<|im_end|>"],
        scoring: "exact match of the last number (lm-eval flexible-extract); strict `####` match \
                  in extra",
        items: Items::Generate(gsm8k_item),
    },
    TaskSpec {
        id: TaskId::Math500,
        name: "math500",
        domain: "math",
        metric: "exact_match",
        files: &["math/math500_test.jsonl"],
        max_new_tokens: 512,
        // Minerva math `until`.
        stop: &["Problem:", "</s>", "<|im_end|>"],
        scoring: "last \\boxed{} answer equal to the reference's after normalisation",
        items: Items::Generate(math_item),
    },
    TaskSpec {
        id: TaskId::Humaneval,
        name: "humaneval",
        domain: "code",
        metric: "pass@1",
        files: &["code/humaneval.jsonl"],
        max_new_tokens: 384,
        // The Codex paper's HumanEval stop sequences.
        stop: &["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"],
        scoring: PASS_AT_1,
        items: Items::Generate(humaneval_item),
    },
    TaskSpec {
        id: TaskId::Mbpp,
        name: "mbpp",
        domain: "code",
        metric: "pass@1",
        files: &["code/mbpp_test.jsonl"],
        max_new_tokens: 384,
        // lm-eval mbpp `until`.
        stop: &["[DONE]"],
        scoring: PASS_AT_1,
        items: Items::MbppFewShot,
    },
    TaskSpec {
        id: TaskId::MmluLaw,
        name: "mmlu_law",
        domain: "law",
        metric: "acc",
        files: &["law/mmlu_law_test.jsonl"],
        max_new_tokens: 0,
        stop: &[],
        scoring: "log-likelihood of each answer letter, the most likely one against the gold",
        items: Items::Choice(mmlu_item),
    },
    TaskSpec {
        id: TaskId::EsftLaw,
        name: "esft_law",
        domain: "law",
        metric: "rouge_l_f1_char",
        files: &["law/esft_eval_law.jsonl"],
        max_new_tokens: 384,
        stop: ESFT_STOP,
        scoring: ROUGE_SCORING,
        items: Items::Generate(esft_item),
    },
    TaskSpec {
        id: TaskId::EsftSummary,
        name: "esft_summary",
        domain: "writing",
        metric: "rouge_l_f1_char",
        files: &["writing/esft_eval_summary.jsonl"],
        max_new_tokens: 384,
        stop: ESFT_STOP,
        scoring: ROUGE_SCORING,
        items: Items::Generate(esft_item),
    },
    TaskSpec {
        id: TaskId::Lambada,
        name: "lambada",
        domain: "writing",
        metric: "acc",
        files: &["writing/lambada_test.jsonl"],
        max_new_tokens: 0,
        stop: &[],
        scoring: "the greedy continuation equals the passage's last word",
        items: Items::Greedy(lambada_item),
    },
    TaskSpec {
        id: TaskId::Ppl,
        name: "ppl",
        domain: "all",
        metric: "perplexity",
        files: &PPL_FILES,
        max_new_tokens: 0,
        stop: &[],
        scoring: "per-token perplexity of the held-out reference text",
        items: Items::Perplexity,
    },
];

impl TaskId {
    /// Every task, in table order.
    pub const ALL: [TaskId; 9] = [
        TaskId::Gsm8k,
        TaskId::Math500,
        TaskId::Humaneval,
        TaskId::Mbpp,
        TaskId::MmluLaw,
        TaskId::EsftLaw,
        TaskId::EsftSummary,
        TaskId::Lambada,
        TaskId::Ppl,
    ];

    /// The task's row of [`TASKS`].
    pub fn spec(self) -> &'static TaskSpec {
        &TASKS[self as usize]
    }

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The domain it measures (math, code, law, writing; `ppl` covers all four).
    pub fn domain(self) -> &'static str {
        self.spec().domain
    }

    /// The metric reported.
    pub fn metric(self) -> &'static str {
        self.spec().metric
    }

    /// Data file(s), relative to the data directory.
    pub fn files(self) -> Vec<&'static str> {
        self.spec().files.to_vec()
    }

    /// New tokens generated per item unless `--max-new-tokens` says otherwise (0: not a
    /// generation task).
    pub fn default_max_new_tokens(self) -> usize {
        self.spec().max_new_tokens
    }

    /// Stop sequences of generation tasks (the completion is cut at the first one).
    pub fn stop_sequences(self) -> Vec<String> {
        self.spec().stop.iter().map(|s| s.to_string()).collect()
    }

    /// Whether a larger score is better (everything but perplexity).
    pub fn higher_is_better(self) -> bool {
        self != TaskId::Ppl
    }

    /// Parse `a,b,c` (or `all`).
    pub fn parse_list(s: &str) -> Result<Vec<TaskId>, EvalError> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                out.extend(TaskId::ALL);
                continue;
            }
            out.push(name.parse()?);
        }
        out.dedup();
        if out.is_empty() {
            return Err(EvalError::Options("no task given".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|t| seen.insert(*t));
        Ok(out)
    }
}

impl FromStr for TaskId {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskId::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| EvalError::UnknownTask {
                name: s.to_string(),
                known: TaskId::ALL.map(TaskId::name).join(", "),
            })
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a generated answer is checked against.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    /// GSM8K gold number (already normalised).
    Gsm8k(String),
    /// MATH gold answer (the reference solution's last `\boxed{}`).
    Math(String),
    /// HumanEval: the program is `prompt + completion + test + check(entry_point)`.
    HumanEval {
        /// The function header and docstring the completion continues.
        prompt: String,
        /// The `check(candidate)` function.
        test: String,
        /// Name of the function under test.
        entry_point: String,
    },
    /// MBPP: the program is the answer's code followed by these asserts.
    Mbpp(Vec<String>),
    /// Reference texts (ESFT): ROUGE-L against the best one.
    Texts(Vec<String>),
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenItem {
    /// Item id (from the data).
    pub id: String,
    /// The prompt, before any chat template.
    pub prompt: String,
    /// The gold answer.
    pub reference: Reference,
}

/// One multiple-choice item scored by log-likelihood.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// Item id.
    pub id: String,
    /// Context (question, options and `Answer:`), before any chat template.
    pub context: String,
    /// Continuations to score (` A`, ` B`, …).
    pub choices: Vec<String>,
    /// Index of the right one.
    pub gold: usize,
    /// Sub-group (MMLU subject).
    pub group: String,
}

/// One greedy-continuation item (LAMBADA).
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuationItem {
    /// Item id.
    pub id: String,
    /// Passage without its last word.
    pub context: String,
    /// The last word with the whitespace before it.
    pub continuation: String,
}

/// One held-out document for perplexity.
#[derive(Debug, Clone, PartialEq)]
pub struct TextDoc {
    /// Document id.
    pub id: String,
    /// Its domain.
    pub domain: String,
    /// The text.
    pub text: String,
}

/// A task's loaded data.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskData {
    /// Generation tasks.
    Generate(Vec<GenItem>),
    /// Log-likelihood multiple choice.
    Choice(Vec<ChoiceItem>),
    /// Greedy continuation.
    Greedy(Vec<ContinuationItem>),
    /// Perplexity documents.
    Perplexity(Vec<TextDoc>),
}

impl TaskData {
    /// Number of scored items.
    pub fn len(&self) -> usize {
        match self {
            TaskData::Generate(v) => v.len(),
            TaskData::Choice(v) => v.len(),
            TaskData::Greedy(v) => v.len(),
            TaskData::Perplexity(v) => v.len(),
        }
    }

    /// Whether there is nothing to score.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A JSONL record with where it came from, for error messages.
struct Record {
    path: PathBuf,
    line: usize,
    value: Value,
}

impl Record {
    fn err(&self, message: impl Into<String>) -> EvalError {
        EvalError::Data {
            path: self.path.clone(),
            line: self.line,
            message: message.into(),
        }
    }

    fn str(&self, field: &str) -> Result<String, EvalError> {
        match self.value.get(field) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.err(format!(
                "field `{field}` should be a string, found {}",
                kind(other)
            ))),
            None => Err(self.err(format!("missing field `{field}`"))),
        }
    }

    fn strings(&self, field: &str) -> Result<Vec<String>, EvalError> {
        let arr = self
            .value
            .get(field)
            .ok_or_else(|| self.err(format!("missing field `{field}`")))?
            .as_array()
            .ok_or_else(|| self.err(format!("field `{field}` should be a list of strings")))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| self.err(format!("field `{field}` should hold only strings")))
            })
            .collect()
    }

    fn id(&self, field: &str) -> String {
        match self.value.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("line{}", self.line),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Record>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        EvalError::io(
            path,
            format!("{e} (pass --data-dir: data/samples holds the committed samples, data/ a full fetch)"),
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| EvalError::Data {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("not a JSON object: {e}"),
        })?;
        if !value.is_object() {
            return Err(EvalError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                message: "expected a JSON object".into(),
            });
        }
        out.push(Record {
            path: path.to_path_buf(),
            line: i + 1,
            value,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Data {
            path: path.to_path_buf(),
            line: 0,
            message: "no records".into(),
        });
    }
    Ok(out)
}

fn take<T>(mut v: Vec<T>, limit: Option<usize>) -> Vec<T> {
    if let Some(n) = limit {
        v.truncate(n);
    }
    v
}

/// The MBPP prompt of lm-evaluation-harness's `mbpp` task (one item, no answer).
pub fn mbpp_query(text: &str, tests: &[String]) -> String {
    format!(
        "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{}\n[BEGIN]\n",
        tests.join("\n")
    )
}

/// Load a task's items from `data_dir` (the first `limit` scored items when given).
pub fn load_task(
    task: TaskId,
    data_dir: &Path,
    limit: Option<usize>,
) -> Result<TaskData, EvalError> {
    let path = data_dir.join(task.spec().files[0]);
    Ok(match task.spec().items {
        Items::Generate(item) => TaskData::Generate(each_record(&path, limit, item)?),
        Items::Choice(item) => TaskData::Choice(each_record(&path, limit, item)?),
        Items::Greedy(item) => TaskData::Greedy(each_record(&path, limit, item)?),
        Items::MbppFewShot => TaskData::Generate(mbpp_items(&path, limit)?),
        Items::Perplexity => TaskData::Perplexity(ppl_docs(data_dir, limit)?),
    })
}

/// One item per record of `path` (the first `limit`).
fn each_record<T>(
    path: &Path,
    limit: Option<usize>,
    item: fn(&Record) -> Result<T, EvalError>,
) -> Result<Vec<T>, EvalError> {
    take(read_jsonl(path)?, limit).iter().map(item).collect()
}

/// GSM8K: lm-eval's `Question: …\nAnswer:` prompt; the gold is the number after `####`.
fn gsm8k_item(r: &Record) -> Result<GenItem, EvalError> {
    let answer = r.str("answer")?;
    if !answer.contains("####") {
        return Err(r.err("field `answer` has no `####` final answer"));
    }
    Ok(GenItem {
        id: r.id("id"),
        prompt: format!("Question: {}\nAnswer:", r.str("question")?),
        reference: Reference::Gsm8k(crate::extract::gsm8k_reference(&answer)),
    })
}

/// MATH-500: Minerva's `Problem:` prompt; the gold is the solution's last `\boxed{}` (else the
/// record's `answer`).
fn math_item(r: &Record) -> Result<GenItem, EvalError> {
    let solution = r.str("solution")?;
    let gold = match crate::extract::last_boxed(&solution) {
        Some(b) => b,
        None => r.str("answer")?,
    };
    Ok(GenItem {
        id: format!("line{}", r.line),
        prompt: format!("Problem:\n{}\n\nSolution:", r.str("problem")?),
        reference: Reference::Math(gold),
    })
}

/// HumanEval: the prompt is the function header; the program adds the tests.
fn humaneval_item(r: &Record) -> Result<GenItem, EvalError> {
    let prompt = r.str("prompt")?;
    Ok(GenItem {
        id: r.id("task_id"),
        prompt: prompt.clone(),
        reference: Reference::HumanEval {
            prompt,
            test: r.str("test")?,
            entry_point: r.str("entry_point")?,
        },
    })
}

/// ESFT law and summary: the record's prompt, scored against its reference answers.
fn esft_item(r: &Record) -> Result<GenItem, EvalError> {
    let answers = r.strings("answers")?;
    if answers.is_empty() {
        return Err(r.err("field `answers` is empty"));
    }
    Ok(GenItem {
        id: r.id("idx"),
        prompt: r.str("prompt")?,
        reference: Reference::Texts(answers),
    })
}

/// MBPP, 3-shot as lm-eval: the first [`MBPP_SHOTS`] records (with their code) prefix every
/// later record's query.
fn mbpp_items(path: &Path, limit: Option<usize>) -> Result<Vec<GenItem>, EvalError> {
    let recs = read_jsonl(path)?;
    if recs.len() <= MBPP_SHOTS {
        return Err(EvalError::Data {
            path: path.to_path_buf(),
            line: 0,
            message: format!(
                "needs more than {MBPP_SHOTS} records: the first {MBPP_SHOTS} are the few-shot examples"
            ),
        });
    }
    let mut shots = String::new();
    for r in &recs[..MBPP_SHOTS] {
        shots.push_str(&mbpp_query(&r.str("text")?, &r.strings("test_list")?));
        shots.push_str(&r.str("code")?);
        shots.push_str("\n[DONE]\n\n");
    }
    let scored: Vec<Record> = recs.into_iter().skip(MBPP_SHOTS).collect();
    take(scored, limit)
        .iter()
        .map(|r| {
            let tests = r.strings("test_list")?;
            Ok(GenItem {
                id: r.id("task_id"),
                prompt: format!("{shots}{}", mbpp_query(&r.str("text")?, &tests)),
                reference: Reference::Mbpp(tests),
            })
        })
        .collect()
}

/// MMLU: the harness's prompt (`question\n\nA. …\nAnswer:`) when the record carries it, else
/// the same layout built from the fields; the choices are the answer letters.
fn mmlu_item(r: &Record) -> Result<ChoiceItem, EvalError> {
    let choices = r.strings("choices")?;
    let gold = r
        .value
        .get("answer")
        .and_then(Value::as_u64)
        .ok_or_else(|| r.err("field `answer` should be a choice index"))? as usize;
    if choices.len() < 2 || choices.len() > 26 || gold >= choices.len() {
        return Err(r.err(format!(
            "answer index {gold} with {} choices",
            choices.len()
        )));
    }
    let letters: Vec<char> = ('A'..='Z').take(choices.len()).collect();
    let context = match r.value.get("prompt").and_then(Value::as_str) {
        Some(p) if p.trim_end().ends_with("Answer:") => p.trim_end().to_string(),
        _ => {
            let mut c = format!("{}\n", r.str("question")?.trim());
            for (l, choice) in letters.iter().zip(&choices) {
                c.push_str(&format!("\n{l}. {choice}"));
            }
            c.push_str("\nAnswer:");
            c
        }
    };
    Ok(ChoiceItem {
        id: format!("line{}", r.line),
        context,
        choices: letters.iter().map(|l| format!(" {l}")).collect(),
        gold,
        group: r.str("subject")?,
    })
}

/// LAMBADA: the passage minus its last whitespace-separated word, which is the continuation.
fn lambada_item(r: &Record) -> Result<ContinuationItem, EvalError> {
    let text = r.str("text")?;
    let text = text.trim_end();
    let cut = text
        .rfind(char::is_whitespace)
        .ok_or_else(|| r.err("field `text` has a single word"))?;
    Ok(ContinuationItem {
        id: r.id("id"),
        context: text[..cut].to_string(),
        continuation: text[cut..].to_string(),
    })
}

/// The held-out documents of every [`PPL_SOURCES`] file (the first `limit` of each).
fn ppl_docs(data_dir: &Path, limit: Option<usize>) -> Result<Vec<TextDoc>, EvalError> {
    let mut docs = Vec::new();
    for (domain, f, _) in PPL_SOURCES {
        for r in take(read_jsonl(&data_dir.join(f))?, limit) {
            let text = match domain {
                "math" => format!("{}{}", r.str("prompt")?, r.str("completion")?),
                "code" => format!("{}{}", r.str("prompt")?, r.str("canonical_solution")?),
                _ => {
                    let answers = r.strings("answers")?;
                    let first = answers
                        .first()
                        .ok_or_else(|| r.err("field `answers` is empty"))?;
                    format!("{} {first}", r.str("prompt")?)
                }
            };
            docs.push(TextDoc {
                id: format!("{domain}:line{}", r.line),
                domain: domain.to_string(),
                text,
            });
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_row_per_task_in_order() {
        for (i, task) in TaskId::ALL.into_iter().enumerate() {
            assert_eq!(TASKS[i].id, task);
            assert_eq!(task.spec().id, task);
            assert_eq!(task.name().parse::<TaskId>().unwrap(), task);
        }
        assert_eq!(
            TaskId::Ppl.files(),
            PPL_SOURCES.map(|(_, file, _)| file).to_vec()
        );
    }
}
