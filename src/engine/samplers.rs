//! llama.cpp's own sampler objects, built from ntv's parameters: the oracle that ntv's chain
//! (`sampling::chain`) is tested against, and DRY's sequence breakers processed against the
//! model's vocabulary the way llama.cpp processes them.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::Model;
use crate::sampling::{DryBreakers, SamplingParams, Stage, chain};

impl Model {
    /// DRY's sequence breakers for this vocabulary (llama.cpp `llama_sampler_init_dry`):
    /// token texts as llama.cpp's `detokenize({id}, true)` gives them, tails tokenised without
    /// special tokens.
    pub fn dry_breakers(&self, breakers: &[String]) -> DryBreakers {
        let vocab = self.raw().vocab();
        DryBreakers::build(
            self.n_vocab(),
            |id| vocab.detokenize(&[LlamaToken(id as i32)], false, true),
            |bytes| {
                vocab
                    .tokenize(bytes, false, false)
                    .into_iter()
                    .map(|t| t.0 as u32)
                    .collect()
            },
            breakers,
        )
    }
}

/// A llama.cpp sampler chain with the settings of a [`SamplingParams`], as llama.cpp's
/// `common_sampler` builds it: the logit bias, then the stages in order (or temperature and
/// Mirostat), optionally `dist` at the end.
pub struct LlamaChain {
    chain: LlamaSampler,
}

/// What llama.cpp's chain left.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaChainResult {
    /// The surviving candidates with a finite logit, in llama.cpp's array order:
    /// (id, final logit).
    pub survivors: Vec<(u32, f32)>,
    /// The token `dist` (or Mirostat) selected.
    pub selected: Option<u32>,
}

impl LlamaChain {
    /// The chain for `params`; `window` stands for a penalty or DRY window of -1 (llama.cpp's
    /// "context size"); `seed` seeds XTC, Mirostat and `dist`; `with_dist` ends the chain with
    /// `dist` (a draw), else the candidates are left as the stages leave them. A temperature of
    /// 0 is left out (ntv computes greedy numbers with T = 1).
    pub fn new(
        model: &Model,
        params: &SamplingParams,
        window: usize,
        seed: u32,
        with_dist: bool,
    ) -> Self {
        let n_vocab = model.n_vocab() as i32;
        let last_n = |n: i32| if n < 0 { window as i32 } else { n };
        let mut samplers = Vec::new();
        if !params.logit_bias.is_empty() {
            let biases: Vec<LlamaLogitBias> = params
                .logit_bias
                .iter()
                .map(|b| LlamaLogitBias::new(LlamaToken(b.id as i32), b.bias.value() as f32))
                .collect();
            samplers.push(LlamaSampler::logit_bias(n_vocab, &biases));
        }
        let greedy = params.greedy || params.temperature == 0.0;
        let mut with_dist = with_dist;
        if params.mirostat != 0 {
            if !greedy {
                samplers.push(LlamaSampler::temp(params.temperature as f32));
            }
            let (tau, eta) = (params.mirostat_ent as f32, params.mirostat_lr as f32);
            samplers.push(if params.mirostat == 1 {
                LlamaSampler::mirostat(n_vocab, seed, tau, eta, 100)
            } else {
                LlamaSampler::mirostat_v2(seed, tau, eta)
            });
            with_dist = false;
        } else {
            for stage in chain::stages(params) {
                match stage {
                    Stage::Penalties => samplers.push(LlamaSampler::penalties(
                        n_vocab,
                        last_n(params.penalty_last_n),
                        params.repetition_penalty as f32,
                        params.frequency_penalty as f32,
                        params.presence_penalty as f32,
                    )),
                    Stage::Dry => {
                        if chain::dry_on(params) {
                            samplers.push(LlamaSampler::dry(
                                model.raw(),
                                params.dry_multiplier as f32,
                                params.dry_base as f32,
                                params.dry_allowed_length as i32,
                                last_n(params.dry_penalty_last_n),
                                params.dry_sequence_breakers.iter().map(String::as_bytes),
                            ))
                        }
                    }
                    Stage::TopNSigma => {
                        samplers.push(LlamaSampler::top_n_sigma(params.top_n_sigma as f32))
                    }
                    Stage::TopK => {
                        if params.top_k > 0 {
                            samplers.push(LlamaSampler::top_k(params.top_k as i32))
                        }
                    }
                    Stage::TypP => samplers.push(LlamaSampler::typical(
                        params.typical_p as f32,
                        params.min_keep as usize,
                    )),
                    Stage::TopP => samplers.push(LlamaSampler::top_p(
                        params.top_p as f32,
                        params.min_keep as usize,
                    )),
                    Stage::MinP => samplers.push(LlamaSampler::min_p(
                        params.min_p as f32,
                        params.min_keep as usize,
                    )),
                    Stage::Xtc => samplers.push(LlamaSampler::xtc(
                        params.xtc_probability as f32,
                        params.xtc_threshold as f32,
                        params.min_keep as usize,
                        seed,
                    )),
                    Stage::Temperature => {
                        if !greedy {
                            samplers.push(LlamaSampler::temp_ext(
                                params.temperature as f32,
                                params.dynatemp_range as f32,
                                params.dynatemp_exponent as f32,
                            ))
                        }
                    }
                }
            }
        }
        if with_dist {
            samplers.push(LlamaSampler::dist(seed));
        }
        Self {
            chain: LlamaSampler::chain_simple(samplers),
        }
    }

    /// Feeds tokens to the chain's history (penalties, DRY), as llama-server does with the
    /// prompt and each generated token.
    pub fn accept(&mut self, ids: &[i32]) {
        for &id in ids {
            self.chain.accept(LlamaToken(id));
        }
    }

    /// Runs the chain on `logits`.
    pub fn apply(&mut self, logits: &[f32]) -> LlamaChainResult {
        let data: Vec<LlamaTokenData> = logits
            .iter()
            .enumerate()
            .map(|(id, &l)| LlamaTokenData::new(LlamaToken(id as i32), l, 0.0))
            .collect();
        let mut arr = LlamaTokenDataArray::new(data, false);
        arr.apply_sampler(&mut self.chain);
        LlamaChainResult {
            selected: arr.selected_token().map(|t| t.0 as u32),
            survivors: arr
                .data
                .iter()
                .filter(|t| t.logit() != f32::NEG_INFINITY)
                .map(|t| (t.id().0 as u32, t.logit()))
                .collect(),
        }
    }
}
