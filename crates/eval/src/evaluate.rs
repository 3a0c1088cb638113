//! Running tasks against a model: prompts → requests → scores → [`TaskResult`]s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use seqtopk_data::{ChatTemplate, ChatTemplateKind, Message, Role};

use crate::extract::{self, INVALID};
use crate::lm::{Generation, Lm};
use crate::report::{ItemRecord, TaskResult};
use crate::sandbox::{Sandbox, SandboxConfig, run_all};
use crate::tasks::{GenItem, MBPP_SHOTS, PPL_SOURCES, Reference, TaskData, TaskId, load_task};
use crate::{EvalError, rouge};

/// How tasks are run.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Directory holding `{math,code,law,writing}/*.jsonl` (`data/samples` or a full fetch).
    pub data_dir: PathBuf,
    /// Score only the first N items of each task (per domain for `ppl`).
    pub limit: Option<usize>,
    /// New tokens per generation (default: each task's own, see
    /// [`TaskId::default_max_new_tokens`]).
    pub max_new_tokens: Option<usize>,
    /// Chat template wrapped around prompts (user turn + assistant header); `None` for raw
    /// prompts, which is what base and `none`-template fine-tunes expect.
    pub chat_template: Option<ChatTemplate>,
    /// Limits for running generated code.
    pub sandbox: SandboxConfig,
    /// Programs run at once.
    pub sandbox_jobs: usize,
    /// Keep per-item records in the results.
    pub keep_items: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data/samples"),
            limit: None,
            max_new_tokens: None,
            chat_template: None,
            sandbox: SandboxConfig::default(),
            sandbox_jobs: std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
            keep_items: true,
        }
    }
}

impl EvalOptions {
    fn template(&self) -> Option<&ChatTemplate> {
        self.chat_template
            .as_ref()
            .filter(|t| t.kind != ChatTemplateKind::None)
    }

    /// A prompt as the model sees it: unchanged without a chat template, else one user turn
    /// followed by the assistant header (an ESFT prompt's own `User: … \n\nAssistant:` framing
    /// is replaced by the template's).
    pub fn format_prompt(&self, prompt: &str) -> String {
        match self.template() {
            None => prompt.to_string(),
            Some(t) => {
                let content = prompt
                    .strip_prefix("User: ")
                    .and_then(|p| p.strip_suffix("\n\nAssistant:"))
                    .unwrap_or(prompt);
                t.render(
                    &[Message {
                        role: Role::User,
                        content: content.to_string(),
                    }],
                    true,
                )
                .text
            }
        }
    }

    fn template_name(&self) -> &'static str {
        match self.template().map(|t| t.kind) {
            None | Some(ChatTemplateKind::None) => "raw prompt",
            Some(ChatTemplateKind::Olmoe) => "olmoe chat template",
            Some(ChatTemplateKind::Tulu) => "tulu chat template",
            Some(ChatTemplateKind::Chatml) => "chatml chat template",
        }
    }
}

/// Run `tasks` with `lm`; one [`TaskResult`] per task (four for `ppl`, one per domain).
pub fn evaluate(
    lm: &Lm,
    tasks: &[TaskId],
    opts: &EvalOptions,
) -> Result<Vec<TaskResult>, EvalError> {
    let needs_sandbox = tasks
        .iter()
        .any(|t| matches!(t, TaskId::Humaneval | TaskId::Mbpp));
    let sandbox = if needs_sandbox {
        Some(Sandbox::new(opts.sandbox.clone())?)
    } else {
        None
    };
    let mut out = Vec::new();
    for &task in tasks {
        let start = Instant::now();
        let data = load_task(task, &opts.data_dir, opts.limit)?;
        if data.is_empty() {
            return Err(EvalError::Options(format!(
                "task {task}: no items to score (limit {:?})",
                opts.limit
            )));
        }
        tracing::info!(task = task.name(), items = data.len(), "evaluating");
        let mut results = match data {
            TaskData::Generate(items) => {
                vec![run_generation(lm, task, &items, opts, sandbox.as_ref())?]
            }
            TaskData::Choice(items) => vec![run_choice(lm, task, &items, opts)?],
            TaskData::Greedy(items) => vec![run_greedy(lm, task, &items, opts)?],
            TaskData::Perplexity(docs) => run_perplexity(lm, &docs, opts)?,
        };
        let secs = start.elapsed().as_secs_f64();
        let share = secs / results.len() as f64;
        for r in &mut results {
            r.seconds = share;
            if !opts.keep_items {
                r.items.clear();
            }
            tracing::info!(
                task = r.task.as_str(),
                score = r.score,
                n = r.n,
                seconds = share,
                "done"
            );
        }
        out.extend(results);
    }
    Ok(out)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The file a task read, for its `setup` line.
fn files_of(task: TaskId, opts: &EvalOptions) -> String {
    task.files()
        .iter()
        .map(|f| opts.data_dir.join(f).display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// HumanEval code from a completion: raw continuations are appended to the prompt; a chat-style
/// answer that redefines the function (optionally in a Markdown fence) replaces the body, with
/// the prompt's imports and helpers kept in front.
pub fn humaneval_program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    let code = completion
        .trim_start()
        .strip_prefix("```python\n")
        .or_else(|| completion.trim_start().strip_prefix("```\n"))
        .unwrap_or(completion);
    let code = extract::truncate_at_stop(code, &["\n```"]);
    let def = format!("def {entry_point}(");
    let body = if code.contains(&def) {
        let header_end = prompt.find(&def).unwrap_or(prompt.len());
        format!("{}{code}", &prompt[..header_end])
    } else {
        format!("{prompt}{code}")
    };
    format!("{body}\n\n{test}\n\ncheck({entry_point})\n")
}

/// An MBPP program: the answer's code followed by the item's asserts.
pub fn mbpp_program(generation: &str, tests: &[String]) -> String {
    format!(
        "{}\n\n{}\n",
        extract::mbpp_code(generation),
        tests.join("\n")
    )
}

fn run_generation(
    lm: &Lm,
    task: TaskId,
    items: &[GenItem],
    opts: &EvalOptions,
    sandbox: Option<&Sandbox>,
) -> Result<TaskResult, EvalError> {
    let max_new = opts
        .max_new_tokens
        .unwrap_or_else(|| task.default_max_new_tokens());
    let mut stops = task.stop_sequences();
    if task == TaskId::Humaneval && opts.template().is_some() {
        // A chat answer is a whole function, usually fenced: cut at the closing fence only.
        stops = vec!["\n```\n".to_string()];
    }
    let prompts = items
        .iter()
        .map(|it| lm.encode(&opts.format_prompt(&it.prompt)))
        .collect::<Result<Vec<_>, _>>()?;
    let gens = lm.generate(&prompts, max_new, &stops)?;
    let truncated = gens.iter().filter(|g| g.truncated_prompt).count();
    let mut extra = BTreeMap::new();
    extra.insert("truncated_prompts".to_string(), truncated as f64);
    extra.insert(
        "mean_new_tokens".to_string(),
        mean(&gens.iter().map(|g| g.ids.len() as f64).collect::<Vec<_>>()),
    );
    let (scores, records, scored_extra) = match task {
        TaskId::Humaneval | TaskId::Mbpp => {
            let sandbox = sandbox.ok_or_else(|| EvalError::Sandbox("no sandbox".into()))?;
            score_programs(items, &gens, sandbox, opts.sandbox_jobs)?
        }
        _ => score_answers(task, items, &gens),
    };
    extra.extend(scored_extra);
    let shots = match task {
        TaskId::Mbpp => {
            format!("3-shot (the first {MBPP_SHOTS} records are the shots, not scored)")
        }
        _ => "0-shot".to_string(),
    };
    let scoring = task.spec().scoring;
    Ok(TaskResult {
        task: task.name().to_string(),
        domain: task.domain().to_string(),
        metric: task.metric().to_string(),
        score: mean(&scores),
        higher_is_better: true,
        n: items.len(),
        extra,
        setup: format!(
            "{shots}, greedy, {max_new} new tokens at most, {}, {scoring}; data {}",
            opts.template_name(),
            files_of(task, opts)
        ),
        seconds: 0.0,
        items: records,
    })
}

/// Per-item scores, item records and extra figures of a generation task.
type Scored = (Vec<f64>, Vec<ItemRecord>, BTreeMap<String, f64>);

/// Code tasks: each completion's program run in the sandbox (pass@1); counts per outcome.
fn score_programs(
    items: &[GenItem],
    gens: &[Generation],
    sandbox: &Sandbox,
    jobs: usize,
) -> Result<Scored, EvalError> {
    let programs: Vec<String> = items
        .iter()
        .zip(gens)
        .map(|(it, g)| match &it.reference {
            Reference::HumanEval {
                prompt,
                test,
                entry_point,
            } => humaneval_program(prompt, &g.text, test, entry_point),
            Reference::Mbpp(tests) => mbpp_program(&g.text, tests),
            _ => String::new(),
        })
        .collect();
    let runs = run_all(sandbox, &programs, jobs)?;
    let mut outcomes: BTreeMap<String, f64> = BTreeMap::new();
    let (mut scores, mut records) = (Vec::new(), Vec::new());
    for ((it, g), (program, run)) in items.iter().zip(gens).zip(programs.iter().zip(&runs)) {
        let s = if run.passed() { 1.0 } else { 0.0 };
        let name = serde_json::to_value(run.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *outcomes.entry(format!("outcome_{name}")).or_default() += 1.0;
        scores.push(s);
        let tail: String = {
            let e = run.stderr.trim_end();
            let start = e.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
            e[start..].to_string()
        };
        records.push(ItemRecord {
            id: it.id.clone(),
            score: s,
            generation: Some(g.text.clone()),
            extracted: Some(program.clone()),
            reference: None,
            detail: Some(format!(
                "{name} in {:.2}s{}",
                run.elapsed_s,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            )),
        });
    }
    Ok((scores, records, outcomes))
}

/// Answer tasks: GSM8K's number (flexible; strict `####` match in the extras), MATH's boxed
/// answer, ESFT's ROUGE-L against the best reference.
fn score_answers(task: TaskId, items: &[GenItem], gens: &[Generation]) -> Scored {
    let (mut scores, mut records, mut strict) = (Vec::new(), Vec::new(), Vec::new());
    for (it, g) in items.iter().zip(gens) {
        let (s, extracted, reference) = match &it.reference {
            Reference::Gsm8k(gold) => {
                let flex = extract::gsm8k_flexible(&g.text);
                let st = extract::gsm8k_strict(&g.text);
                strict.push(f64::from(u8::from(extract::gsm8k_match(&st, gold))));
                let ok = extract::gsm8k_match(&flex, gold);
                (f64::from(u8::from(ok)), flex, gold.clone())
            }
            Reference::Math(gold) => {
                let ans = extract::math_answer(&g.text);
                let ok = ans.as_deref().is_some_and(|a| extract::math_equal(a, gold));
                (
                    f64::from(u8::from(ok)),
                    ans.unwrap_or_else(|| INVALID.to_string()),
                    gold.clone(),
                )
            }
            Reference::Texts(answers) => {
                let pred = g.text.trim();
                (
                    rouge::rouge_l_max(pred, answers),
                    pred.to_string(),
                    answers.first().cloned().unwrap_or_default(),
                )
            }
            _ => (0.0, String::new(), String::new()),
        };
        scores.push(s);
        records.push(ItemRecord {
            id: it.id.clone(),
            score: s,
            generation: Some(g.text.clone()),
            extracted: Some(extracted),
            reference: Some(reference),
            detail: None,
        });
    }
    let mut extra = BTreeMap::new();
    if task == TaskId::Gsm8k {
        extra.insert("exact_match_strict".to_string(), mean(&strict));
    }
    (scores, records, extra)
}

fn run_choice(
    lm: &Lm,
    task: TaskId,
    items: &[crate::tasks::ChoiceItem],
    opts: &EvalOptions,
) -> Result<TaskResult, EvalError> {
    let mut requests = Vec::new();
    for it in items {
        let context = opts.format_prompt(&it.context);
        for c in &it.choices {
            requests.push(lm.encode_pair(&context, c)?);
        }
    }
    let scores = lm.loglikelihood(&requests)?;
    let mut k = 0;
    let mut correct = Vec::new();
    let mut by_group: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut records = Vec::new();
    for it in items {
        let lls: Vec<f64> = scores[k..k + it.choices.len()]
            .iter()
            .map(|s| s.logprob)
            .collect();
        k += it.choices.len();
        let pick = argmax(&lls);
        let s = f64::from(u8::from(pick == it.gold));
        correct.push(s);
        by_group.entry(it.group.clone()).or_default().push(s);
        records.push(ItemRecord {
            id: it.id.clone(),
            score: s,
            generation: None,
            extracted: Some(it.choices[pick].trim().to_string()),
            reference: Some(it.choices[it.gold].trim().to_string()),
            detail: Some(format!(
                "log-likelihoods {}",
                lls.iter()
                    .map(|l| format!("{l:.4}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        });
    }
    let mut extra = BTreeMap::new();
    for (g, v) in by_group {
        extra.insert(format!("acc_{g}"), mean(&v));
    }
    Ok(TaskResult {
        task: task.name().to_string(),
        domain: task.domain().to_string(),
        metric: task.metric().to_string(),
        score: mean(&correct),
        higher_is_better: true,
        n: items.len(),
        extra,
        setup: format!(
            "0-shot, {}, the option letter with the highest summed log-probability given the question and options; data {}",
            opts.template_name(),
            files_of(task, opts)
        ),
        seconds: 0.0,
        items: records,
    })
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

fn run_greedy(
    lm: &Lm,
    task: TaskId,
    items: &[crate::tasks::ContinuationItem],
    opts: &EvalOptions,
) -> Result<TaskResult, EvalError> {
    let requests = items
        .iter()
        .map(|it| lm.encode_pair(&it.context, &it.continuation))
        .collect::<Result<Vec<_>, _>>()?;
    let scores = lm.loglikelihood(&requests)?;
    let acc: Vec<f64> = scores
        .iter()
        .map(|s| f64::from(u8::from(s.greedy)))
        .collect();
    let nll: f64 = -scores.iter().map(|s| s.logprob).sum::<f64>();
    let mut extra = BTreeMap::new();
    extra.insert(
        "perplexity_last_word".to_string(),
        (nll / items.len() as f64).exp(),
    );
    let records = items
        .iter()
        .zip(&scores)
        .map(|(it, s)| ItemRecord {
            id: it.id.clone(),
            score: f64::from(u8::from(s.greedy)),
            generation: None,
            extracted: None,
            reference: Some(it.continuation.trim().to_string()),
            detail: Some(format!(
                "log-likelihood {:.4} over {} tokens",
                s.logprob, s.tokens
            )),
        })
        .collect();
    Ok(TaskResult {
        task: task.name().to_string(),
        domain: task.domain().to_string(),
        metric: task.metric().to_string(),
        score: mean(&acc),
        higher_is_better: true,
        n: items.len(),
        extra,
        setup: format!(
            "0-shot raw passage, correct when every token of the last word is the greedy (argmax) prediction; data {}",
            files_of(task, opts)
        ),
        seconds: 0.0,
        items: records,
    })
}

fn run_perplexity(
    lm: &Lm,
    docs: &[crate::tasks::TextDoc],
    opts: &EvalOptions,
) -> Result<Vec<TaskResult>, EvalError> {
    let mut out = Vec::new();
    for (domain, file, what) in PPL_SOURCES {
        let mut nll = 0.0;
        let mut tokens = 0usize;
        let mut bytes = 0usize;
        let mut records = Vec::new();
        let mine: Vec<_> = docs.iter().filter(|d| d.domain == domain).collect();
        for d in &mine {
            let ids = lm.encode(&d.text)?;
            let (l, n) = lm.document_nll(&ids)?;
            nll += l;
            tokens += n;
            bytes += d.text.len();
            records.push(ItemRecord {
                id: d.id.clone(),
                score: if n > 0 { l / n as f64 } else { 0.0 },
                generation: None,
                extracted: None,
                reference: None,
                detail: Some(format!("{n} tokens, mean NLL (nats)")),
            });
        }
        if tokens == 0 {
            return Err(EvalError::Options(format!(
                "ppl_{domain}: no tokens to score in {}",
                opts.data_dir.join(file).display()
            )));
        }
        let mut extra = BTreeMap::new();
        extra.insert("tokens".to_string(), tokens as f64);
        extra.insert("nll_per_token".to_string(), nll / tokens as f64);
        extra.insert(
            "bits_per_byte".to_string(),
            nll / std::f64::consts::LN_2 / bytes as f64,
        );
        out.push(TaskResult {
            task: format!("ppl_{domain}"),
            domain: domain.to_string(),
            metric: TaskId::Ppl.metric().to_string(),
            score: (nll / tokens as f64).exp(),
            higher_is_better: false,
            n: mine.len(),
            extra,
            setup: format!(
                "token perplexity of held-out text: {what}; windows of {} tokens overlapping by one; data {}",
                lm.max_length,
                opts.data_dir.join(file).display()
            ),
            seconds: 0.0,
            items: records,
        });
    }
    Ok(out)
}
