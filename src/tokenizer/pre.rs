//! The pre-tokenizers of BPE vocabularies, by `tokenizer.ggml.pre`, as llama.cpp maps them:
//! the steps that cut text into words (each one splits the pieces the previous one left),
//! how words are spelled for the merges, and the flags that go with the name. The regexes
//! are llama.cpp's own (its rewrites of the Hugging Face ones); `split` reads them as
//! llama.cpp does.

/// One step of a pre-tokenizer.
#[derive(Clone, Copy)]
pub(super) enum Step {
    /// Cut each piece into the regex's matches and the runs between them.
    Regex(&'static str),
    /// llama.cpp's hand-written AFMoE digit splitter (its `\p{AFMoE_digits}`).
    DigitGroups,
}

/// How the words of a vocabulary are spelled before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Spelling {
    /// GPT-2 byte-level: every byte of the word becomes a printable stand-in character;
    /// tokens decode through the same map.
    ByteLevel,
    /// Raw UTF-8 with spaces written `▁` (SentencePiece style, Gemma 4); characters outside
    /// the vocabulary fall back to `<0xNN>` byte tokens.
    Escaped,
    /// Raw UTF-8 (the `whitespace` pre-tokenizer), with `<0xNN>` byte fallback; tokens decode
    /// as byte-level text, as llama.cpp does.
    Raw,
}

/// A `tokenizer.ggml.pre` value's behaviour.
#[derive(Clone, Copy)]
pub(super) struct Pre {
    pub steps: &'static [Step],
    pub spelling: Spelling,
    /// A word that is itself a token becomes that token without merging.
    pub ignore_merges: bool,
    /// BOS is added by default (`tokenizer.ggml.add_bos_token` overrides it).
    pub add_bos: bool,
    /// BOS is added even when `tokenizer.ggml.add_bos_token` is false (Gemma 4).
    pub force_bos: bool,
    /// A word made only of newlines that is a token becomes that token (Gemma 4).
    pub whole_newline_runs: bool,
    /// `tokenizer.ggml.merges` must be present (Kimi K2 may go without).
    pub needs_merges: bool,
}

impl Pre {
    const fn new(steps: &'static [Step]) -> Self {
        Self {
            steps,
            spelling: Spelling::ByteLevel,
            ignore_merges: false,
            add_bos: false,
            force_bos: false,
            whole_newline_runs: false,
            needs_merges: true,
        }
    }

    const fn ignoring_merges(mut self) -> Self {
        self.ignore_merges = true;
        self
    }

    const fn with_bos(mut self) -> Self {
        self.add_bos = true;
        self
    }

    /// The pre-tokenizer llama.cpp uses for `name`; `None` for a name it refuses
    /// ("unknown pre-tokenizer type"). An absent or empty name is llama.cpp's `default`.
    pub fn named(name: &str) -> Option<Self> {
        PRE_TOKENIZERS
            .iter()
            .find(|(names, _)| names.contains(&name))
            .map(|&(_, pre)| pre)
    }
}

/// Every `tokenizer.ggml.pre` value llama.cpp knows, with its pre-tokenizer.
pub(super) const PRE_TOKENIZERS: &[(&[&str], Pre)] = &[
    (&["", "default"], Pre::new(DEFAULT)),
    (&["minicpm5"], Pre::new(MINICPM5).ignoring_merges()),
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        Pre::new(LLAMA3).ignoring_merges().with_bos(),
    ),
    (&["dbrx", "smaug-bpe", "chatglm-bpe"], Pre::new(LLAMA3)),
    (&["glm4", "glm5"], Pre::new(LLAMA3).ignoring_merges()),
    (&["jais-2"], Pre::new(JAIS2)),
    (&["deepseek-llm"], Pre::new(DEEPSEEK_LLM)),
    (&["deepseek-coder"], Pre::new(DEEPSEEK_CODER)),
    (
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        Pre::new(DEEPSEEK_V3),
    ),
    (&["spark2_5"], Pre::new(SPARK2_5)),
    (&["youtu"], Pre::new(YOUTU).ignoring_merges()),
    (&["falcon"], Pre::new(FALCON)),
    (
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        Pre::new(SINGLE_DIGITS_GPT2),
    ),
    (
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "jina-v1-en",
            "jina-v2-code",
            "roberta-bpe",
            "exaone4",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
        ],
        Pre::new(GPT2_ONLY),
    ),
    (
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        Pre::new(QWEN2),
    ),
    (&["qwen35"], Pre::new(QWEN35)),
    (&["poro-chat", "bloom", "gpt3-finnish"], Pre::new(BLOOM)),
    (&["viking"], Pre::new(VIKING)),
    (&["tekken"], Pre::new(TEKKEN).ignoring_merges().with_bos()),
    (&["chameleon"], Pre::new(CHAMELEON).with_bos()),
    (
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        Pre::new(GPT4O),
    ),
    (
        &["granite-embed-multi-97m"],
        Pre::new(GRANITE_EMBED_MULTI).ignoring_merges(),
    ),
    (&["tiny_aya", "cohere2moe"], Pre::new(TINY_AYA)),
    (
        &["kimi-k2"],
        Pre {
            needs_merges: false,
            ..Pre::new(KIMI_K2)
        },
    ),
    (&["superbpe"], Pre::new(SUPERBPE)),
    (
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        Pre::new(BAILINGMOE),
    ),
    (&["seed-coder"], Pre::new(SEED_CODER)),
    (&["ufakzeka"], Pre::new(UFAKZEKA)),
    (&["afmoe"], Pre::new(AFMOE)),
    (&["laguna"], Pre::new(LAGUNA)),
    (&["exaone-moe"], Pre::new(EXAONE_MOE)),
    (
        &["gemma4", "granite-embed-multi-311m"],
        Pre {
            spelling: Spelling::Escaped,
            force_bos: true,
            whole_newline_runs: true,
            ..Pre::new(NEWLINE_RUNS)
        },
    ),
    (
        &["sarvam-moe"],
        Pre {
            spelling: Spelling::Escaped,
            ..Pre::new(NEWLINE_RUNS)
        },
    ),
    (
        &["whitespace"],
        Pre {
            spelling: Spelling::Raw,
            ..Pre::new(WHITESPACE)
        },
    ),
];

/// GPT-2's split: contractions, letter runs, digit runs, other symbols, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3: contractions in either case, digits in groups of up to three, newlines kept
/// with the symbols before them.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2: Llama 3's split with single digits.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o: words split where lower case turns to upper, with their contraction (letters
/// that are not ASCII count as both cases).
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// DeepSeek V3: ASCII punctuation opens a Latin word; letters with their marks.
const DEEPSEEK_V3_SPLIT: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;
/// CJK ideographs, hiragana and katakana runs.
const CJK_KANA: &str = "[一-龥\u{3040}-ゟ゠-ヿ]+";
/// CJK ideographs, everything from Samaritan to them, and Hangul (DeepSeek LLM and Coder).
const CJK_HANGUL: &str = "[一-龥ࠀ-一가-\u{D7FF}]+";
/// Runs of newlines and runs of anything else.
const NEWLINE_RUN_SPLIT: &str = r"[^\n]+|[\n]+";
const DEFAULT: &[Step] = &[
    Step::Regex(r"[\p{P}\$\+<=>\^~\|]+"),
    Step::Regex(GPT2),
    Step::Regex(r"\p{N}+"),
    Step::Regex(r"[0-9][0-9][0-9]"),
];
const GPT2_ONLY: &[Step] = &[Step::Regex(GPT2)];
const SINGLE_DIGITS_GPT2: &[Step] = &[Step::Regex(r"\p{N}"), Step::Regex(GPT2)];
const LLAMA3: &[Step] = &[Step::Regex(LLAMA3_SPLIT)];
const QWEN2: &[Step] = &[Step::Regex(QWEN2_SPLIT)];
const JAIS2: &[Step] = &[Step::Regex(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
)];
const DEEPSEEK_LLM: &[Step] = &[
    Step::Regex("[\r\n]"),
    Step::Regex("\\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u{1F7D}ᾀ-ᾴᾶ-ᾼ\u{1FBE}ῂ-ῄῆ-ῌῐ-\u{1FD3}ῖ-\u{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u{2126}ℨ\u{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+"),
    Step::Regex("\\s?[!-/:-~！-／：-～‘-‟\u{3000}-。]+"),
    Step::Regex(r"\s+$"),
    Step::Regex(CJK_HANGUL),
    Step::Regex(r"\p{N}+"),
];
const DEEPSEEK_CODER: &[Step] = &[
    Step::Regex("[\r\n]"),
    Step::Regex(r"\s?\p{L}+"),
    Step::Regex(r"\s?\p{P}+"),
    Step::Regex(CJK_HANGUL),
    Step::Regex(r"\p{N}"),
];
const DEEPSEEK_V3: &[Step] = &[
    Step::Regex(r"\p{N}{1,3}"),
    Step::Regex(CJK_KANA),
    Step::Regex(DEEPSEEK_V3_SPLIT),
];
const SPARK2_5: &[Step] = &[
    Step::Regex(r"\p{N}{1,3}"),
    Step::Regex(CJK_KANA),
    Step::Regex(
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##,
    ),
    Step::Regex(r"\p{N}"),
];
const YOUTU: &[Step] = &[
    Step::Regex("[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\u{3040}-ゟ゠-ヿ]+"),
    Step::Regex(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];
/// Falcon: punctuation runs, GPT-2's split, then digits in threes.
const FALCON: &[Step] = &[
    Step::Regex(r"[\p{P}\$\+<=>\^~\|`]+"),
    Step::Regex(GPT2),
    Step::Regex(r"[0-9][0-9][0-9]"),
];
const QWEN35: &[Step] = &[Step::Regex(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)];
const BLOOM: &[Step] = &[Step::Regex(r" ?[^(\s|.,!?…。，、।۔،)]+")];
const VIKING: &[Step] = &[
    Step::Regex(r" ?[^(\s|.,!?…。，、।۔،)]+"),
    Step::Regex(r"\p{N}"),
];
const TEKKEN: &[Step] = &[Step::Regex(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)];
const CHAMELEON: &[Step] = &[
    Step::Regex(r"<sentinel:[0-9]+>"),
    Step::Regex(r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z"),
    Step::Regex(r"([\t\n]|    |  )"),
    Step::Regex(r"\p{N}"),
    Step::Regex(r"[\p{P}!-/:-@\[-`{-~]"),
    Step::Regex(GPT2),
];
const GPT4O: &[Step] = &[Step::Regex(GPT4O_SPLIT)];
/// GPT-4o's split with combining marks counted as letters.
const GRANITE_EMBED_MULTI: &[Step] = &[Step::Regex(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)];
/// Digit runs, cut into threes from the right by an empty match.
const SUPERBPE: &[Step] = &[Step::Regex(r"\p{N}+"), Step::Regex(r"(?=(\d{3})+(?!\d))")];
const BAILINGMOE: &[Step] = &[Step::Regex(
    r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
)];
const SEED_CODER: &[Step] = &[Step::Regex(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
)];
/// Qwen2's split without contractions, so that Turkish suffixes stay on their word.
const UFAKZEKA: &[Step] = &[Step::Regex(
    r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)];
const NEWLINE_RUNS: &[Step] = &[Step::Regex(NEWLINE_RUN_SPLIT)];
const LAGUNA: &[Step] = &[Step::Regex(NEWLINE_RUN_SPLIT), Step::Regex(QWEN2_SPLIT)];
const EXAONE_MOE: &[Step] = &[Step::Regex(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
)];
const MINICPM5: &[Step] = &[
    Step::Regex(r"\p{N}{1,3}"),
    Step::Regex(
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];
const WHITESPACE: &[Step] = &[Step::Regex(r"\S+")];
/// Digits in threes counted from the right, then GPT-4o's split in its `\p{Lu}` form.
const TINY_AYA: &[Step] = &[
    Step::DigitGroups,
    Step::Regex(
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];
/// AFMoE: digit groups, Asian scripts, then DeepSeek V3's split.
const AFMOE: &[Step] = &[
    Step::DigitGroups,
    Step::Regex("[一-鿿㐀-䶿豈-\u{FAFF}\u{3040}-ゟ゠-ヿ･-ﾟ⼀-\u{2FDF}เ-\u{E7F}\u{E80}-\u{EFF}ក-\u{17FF}က-႟ꩠ-ꩿꧠ-\u{A9FF}가-\u{D7AF}ᄀ-ᇿ]+"),
    Step::Regex(DEEPSEEK_V3_SPLIT),
];

/// Kimi K2, which llama.cpp splits with hand-written code; this regex does the same: Han
/// runs (llama.cpp's ranges), other letter runs with a contraction, digits in threes, then
/// GPT-2-like symbols and whitespace.
const KIMI_K2: &[Step] = &[Step::Regex(
    "[\u{3400}-\u{4DBF}\u{4E00}-\u{9FFF}\u{F900}-\u{FAFF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2EBEF}\u{2F800}-\u{2FA1F}]+\
     |[^\\r\\n\\p{L}\\p{N}]?[\\p{L}&&[^\u{3400}-\u{4DBF}\u{4E00}-\u{9FFF}\u{F900}-\u{FAFF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2EBEF}\u{2F800}-\u{2FA1F}]]+\
     (?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?\
     |\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
)];
