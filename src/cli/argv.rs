//! The command line as clap reads it. Each subcommand declares only the options it takes, so
//! that its --help lists those alone; options written before the subcommand's name
//! (`vibrant --device gpu -m M bench`, as vibrant has always accepted) are moved after it, where
//! that subcommand parses them or refuses them by name.

use clap::Command;
use std::ffi::OsString;

/// Spellings clap cannot declare (a short option is one character) rewritten to their long
/// form: llama-bench's `-ub`, llama.cpp's `-ctk` and `-ctv`.
const MULTI_CHAR_SHORTS: &[(&str, &str)] = &[
    ("-ub", "--ubatch-size"),
    ("-ctk", "--cache-type-k"),
    ("-ctv", "--cache-type-v"),
];

pub fn normalize(cli: &Command, args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args = expand_multi_char_shorts(args.into_iter().collect());
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        if is_subcommand(cli, arg) {
            args[1..=i].rotate_right(1);
            break;
        }
        let is_option = arg.starts_with('-') && arg != "-" && arg != "--";
        if !is_option || is_top_level_flag(arg) {
            break; // clap reports it (or, for --help and --version, answers it) as it stands
        }
        i += if takes_separate_value(cli, arg) { 2 } else { 1 };
    }
    args
}

fn expand_multi_char_shorts(mut args: Vec<OsString>) -> Vec<OsString> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    for arg in &mut args[..end] {
        if let Some((_, long)) = MULTI_CHAR_SHORTS.iter().find(|(short, _)| arg == short) {
            *arg = long.into();
        }
    }
    args
}

fn is_subcommand(cli: &Command, name: &str) -> bool {
    cli.get_subcommands()
        .any(|s| s.get_name() == name || s.get_all_aliases().any(|a| a == name))
}

fn is_top_level_flag(arg: &str) -> bool {
    matches!(arg, "-h" | "--help" | "-V" | "--version")
}

/// Whether `arg` is an option whose value is the next argument (`--temp 0`, `-n 24`, `-vn 24`)
/// rather than attached to it (`--temp=0`, `-n24`) or absent (`--raw`).
fn takes_separate_value(cli: &Command, arg: &str) -> bool {
    if let Some(long) = arg.strip_prefix("--") {
        return !long.contains('=') && option_takes_value(cli, |a| a.get_long() == Some(long));
    }
    let shorts: Vec<char> = arg[1..].chars().collect();
    for (i, &c) in shorts.iter().enumerate() {
        if option_takes_value(cli, |a| a.get_short() == Some(c)) {
            return i + 1 == shorts.len();
        }
    }
    false
}

/// Whether the option `find` picks takes a value in the subcommands that have it (they agree:
/// see the test below).
fn option_takes_value(cli: &Command, find: impl Fn(&clap::Arg) -> bool) -> bool {
    cli.get_subcommands()
        .flat_map(|s| s.get_arguments())
        .any(|a| find(a) && a.get_action().takes_values())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::collections::HashMap;

    fn normalized(line: &str) -> String {
        let args = line.split(' ').map(OsString::from);
        let out = normalize(&super::super::Cli::command(), args);
        let out: Vec<_> = out.iter().map(|a| a.to_str().unwrap()).collect();
        out.join(" ")
    }

    #[test]
    fn options_before_the_subcommand_move_after_it() {
        assert_eq!(
            normalized("vibrant --device gpu -m M ask hi"),
            "vibrant ask --device gpu -m M hi"
        );
        assert_eq!(
            normalized("vibrant -vn 24 --temp=0 -t4 chat"),
            "vibrant chat -vn 24 --temp=0 -t4"
        );
        // The value of -m is not mistaken for the subcommand.
        assert_eq!(normalized("vibrant -m chat ask x"), "vibrant ask -m chat x");
        assert_eq!(
            normalized("vibrant --temp -1 ask x"),
            "vibrant ask --temp -1 x"
        );
        assert_eq!(normalized("vibrant ask -m M x"), "vibrant ask -m M x");
        assert_eq!(normalized("vibrant --help ask"), "vibrant --help ask");
    }

    #[test]
    fn llama_bench_spellings_become_long_options() {
        assert_eq!(
            normalized("vibrant bench -ub 128,256 -p 1"),
            "vibrant bench --ubatch-size 128,256 -p 1"
        );
        assert_eq!(
            normalized("vibrant -ctk q8_0 ask -ctv q8_0 x"),
            "vibrant ask --cache-type-k q8_0 --cache-type-v q8_0 x"
        );
        assert_eq!(
            normalized("vibrant ask -- -ub"),
            "vibrant ask -- -ub",
            "a prompt after -- is left alone"
        );
    }

    /// Moving options relies on every subcommand agreeing whether an option takes a value.
    #[test]
    fn subcommands_agree_on_which_options_take_values() {
        let cli = super::super::Cli::command();
        let mut seen: HashMap<String, (bool, String)> = HashMap::new();
        for sub in cli.get_subcommands() {
            for a in sub.get_arguments() {
                let names = a
                    .get_long()
                    .map(|l| format!("--{l}"))
                    .into_iter()
                    .chain(a.get_short().map(|s| format!("-{s}")));
                for name in names {
                    let takes = a.get_action().takes_values();
                    let (other, by) = seen
                        .entry(name.clone())
                        .or_insert((takes, sub.get_name().to_string()));
                    assert_eq!(*other, takes, "{name} in {} and {by}", sub.get_name());
                }
            }
        }
    }
}
