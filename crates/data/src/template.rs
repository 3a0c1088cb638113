//! Chat templates, implemented in Rust rather than by a Jinja engine.
//!
//! Each template reproduces, character for character, what transformers' `apply_chat_template`
//! produces with the model family's Jinja template (checked against a committed fixture made by
//! `tools/data/make_chat_fixture.py`). Implementing them directly lets the renderer also report
//! *which bytes are the answer*, which is what SFT loss masking needs and Jinja cannot tell us.

use std::ops::Range;

use crate::config::ChatTemplateKind;
use crate::source::{Message, Role};

/// BOS string that OLMoE-1B-7B-0924-Instruct's (and OLMo-2-Instruct's) `tokenizer_config.json`
/// sets as `bos_token` and its template emits first (`{{ bos_token }}`).
pub const OLMOE_BOS: &str = "<|endoftext|>";
/// EOS of the OLMoE tokenizer (id 50279 in `allenai/gpt-neox-olmo-dolma-v1_5`).
pub const OLMOE_EOS: &str = "<|endoftext|>";
/// ChatML end-of-turn, which is also Qwen2-Instruct's `eos_token`.
pub const CHATML_END: &str = "<|im_end|>";
/// The system turn Qwen2-Instruct's template inserts when the conversation has none.
pub const QWEN2_DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

/// A rendered conversation: the text and the byte ranges that are SFT targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The full text, as `apply_chat_template(..., tokenize=False)` would return it.
    pub text: String,
    /// Byte ranges of `text` whose tokens are trained on (answers and the token that ends them).
    pub trainable: Vec<Range<usize>>,
}

impl Rendered {
    fn push(&mut self, s: &str, trainable: bool) {
        let start = self.text.len();
        self.text.push_str(s);
        if trainable && !s.is_empty() {
            match self.trainable.last_mut() {
                Some(r) if r.end == start => r.end = self.text.len(),
                _ => self.trainable.push(start..self.text.len()),
            }
        }
    }
}

/// A chat template with its EOS string resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// Which family.
    pub kind: ChatTemplateKind,
    /// EOS string (Tulu/OLMoE: appended to each answer; none: appended after the answer).
    pub eos: String,
}

impl ChatTemplate {
    /// The template with its family's default EOS (`eos` overrides it).
    pub fn new(kind: ChatTemplateKind, eos: Option<&str>) -> Self {
        let default = match kind {
            ChatTemplateKind::Chatml => CHATML_END,
            _ => OLMOE_EOS,
        };
        Self {
            kind,
            eos: eos.unwrap_or(default).to_string(),
        }
    }

    /// Render messages. With `add_generation_prompt` the assistant header is appended (inference).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Rendered {
        let mut r = Rendered {
            text: String::new(),
            trainable: Vec::new(),
        };
        match self.kind {
            ChatTemplateKind::Olmoe | ChatTemplateKind::Tulu => {
                self.render_tulu(&mut r, messages, add_generation_prompt)
            }
            ChatTemplateKind::Chatml => render_chatml(&mut r, messages, add_generation_prompt),
            ChatTemplateKind::None => self.render_raw(&mut r, messages),
        }
        r
    }

    /// OLMoE-Instruct's template (Tulu's, after a BOS).
    fn render_tulu(&self, r: &mut Rendered, messages: &[Message], add_generation_prompt: bool) {
        // {{ bos_token }}{% for message in messages %}
        //   system: '<|system|>\n' + content + '\n'
        //   user: '<|user|>\n' + content + '\n'
        //   assistant: '<|assistant|>\n' + content + eos_token (+ '\n' unless loop.last)
        //   {% if loop.last and add_generation_prompt %}'<|assistant|>\n'{% endif %}
        if self.kind == ChatTemplateKind::Olmoe {
            r.push(OLMOE_BOS, false);
        }
        let n = messages.len();
        for (i, m) in messages.iter().enumerate() {
            let last = i + 1 == n;
            match m.role {
                Role::System => {
                    r.push("<|system|>\n", false);
                    r.push(&m.content, false);
                    r.push("\n", false);
                }
                Role::User => {
                    r.push("<|user|>\n", false);
                    r.push(&m.content, false);
                    r.push("\n", false);
                }
                Role::Assistant => {
                    r.push("<|assistant|>\n", false);
                    r.push(&m.content, true);
                    r.push(&self.eos, true);
                    if !last {
                        r.push("\n", false);
                    }
                }
            }
            if last && add_generation_prompt {
                r.push("<|assistant|>\n", false);
            }
        }
    }

    fn render_raw(&self, r: &mut Rendered, messages: &[Message]) {
        // Raw models: contents separated by a blank line, EOS after the last answer.
        for (i, m) in messages.iter().enumerate() {
            if i > 0 {
                r.push("\n\n", false);
            }
            r.push(&m.content, m.role == Role::Assistant);
        }
        if messages.last().is_some_and(|m| m.role == Role::Assistant) {
            r.push(&self.eos, true);
        }
    }

    /// Render a prompt/completion pair: a user turn and an assistant turn for chat templates, and
    /// plain `prompt + completion + eos` for `none` (the datasets already carry their own
    /// "Question: ... Answer:" framing).
    pub fn render_prompt_completion(&self, prompt: &str, completion: &str) -> Rendered {
        match self.kind {
            ChatTemplateKind::None => {
                let mut r = Rendered {
                    text: String::new(),
                    trainable: Vec::new(),
                };
                r.push(prompt, false);
                r.push(completion, true);
                r.push(&self.eos, true);
                r
            }
            _ => self.render(
                &[
                    Message {
                        role: Role::User,
                        content: prompt.to_string(),
                    },
                    Message {
                        role: Role::Assistant,
                        content: completion.to_string(),
                    },
                ],
                false,
            ),
        }
    }
}

/// Qwen2-Instruct's ChatML template.
fn render_chatml(r: &mut Rendered, messages: &[Message], add_generation_prompt: bool) {
    // Qwen2-Instruct: default system turn if the first message is not a system one,
    // then '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n' per message.
    if messages.first().is_some_and(|m| m.role != Role::System) {
        r.push("<|im_start|>system\n", false);
        r.push(QWEN2_DEFAULT_SYSTEM, false);
        r.push("<|im_end|>\n", false);
    }
    for m in messages {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        r.push("<|im_start|>", false);
        r.push(role, false);
        r.push("\n", false);
        let answer = m.role == Role::Assistant;
        r.push(&m.content, answer);
        r.push(CHATML_END, answer);
        r.push("\n", false);
    }
    if add_generation_prompt {
        r.push("<|im_start|>assistant\n", false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: Role::User,
                content: "Hi".into(),
            },
            Message {
                role: Role::Assistant,
                content: "Hello!".into(),
            },
        ]
    }

    #[test]
    fn tulu_spans_cover_answer_and_eos() {
        let r = ChatTemplate::new(ChatTemplateKind::Olmoe, None).render(&msgs(), false);
        assert_eq!(
            r.text,
            "<|endoftext|><|user|>\nHi\n<|assistant|>\nHello!<|endoftext|>"
        );
        assert_eq!(r.trainable.len(), 1);
        assert_eq!(&r.text[r.trainable[0].clone()], "Hello!<|endoftext|>");
    }

    #[test]
    fn chatml_inserts_default_system() {
        let r = ChatTemplate::new(ChatTemplateKind::Chatml, None).render(&msgs(), false);
        assert_eq!(
            r.text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
        );
        assert_eq!(&r.text[r.trainable[0].clone()], "Hello!<|im_end|>");
    }

    #[test]
    fn none_is_raw_concatenation() {
        let t = ChatTemplate::new(ChatTemplateKind::None, None);
        let r = t.render_prompt_completion("Q: 2+2?\nA:", " 4");
        assert_eq!(r.text, "Q: 2+2?\nA: 4<|endoftext|>");
        assert_eq!(&r.text[r.trainable[0].clone()], " 4<|endoftext|>");
    }
}
