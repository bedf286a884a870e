//! The book's flag table (`book/src/master.md`, section "Flags") says it matches `--help`:
//! every long flag `einhorn-master --help` prints has a row in it, and every row names a
//! flag `--help` prints. A flag added to the command line without a row fails here.

use std::collections::BTreeSet;
use std::process::Command;

/// The long flags (`--bind`, ...) of the option lines of a clap `--help` output, but for
/// `--help` and `--version`, which every clap program has.
fn flags_in_help(help: &str) -> BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| {
            let long = &line[line.find("--")? + 2..];
            let end = long
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(long.len());
            Some(long[..end].to_owned())
        })
        .filter(|flag| !["help", "version"].contains(&flag.as_str()))
        .collect()
}

/// The long flags named in the first cell of each row of the chapter's "Flags" table.
fn flags_in_table(chapter: &str) -> BTreeSet<String> {
    let section = chapter
        .split("\n## Flags\n")
        .nth(1)
        .expect("a \"## Flags\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .flat_map(|row| {
            let cell = row.split('|').nth(1).unwrap_or_default();
            cell.split("--")
                .skip(1)
                .map(|long| {
                    long.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_flag_of_help_has_a_row_in_the_books_table_and_no_row_is_stale() {
    let out = Command::new(env!("CARGO_BIN_EXE_einhorn-master"))
        .arg("--help")
        .output()
        .expect("run einhorn-master --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let in_help = flags_in_help(&help);
    assert!(
        in_help.contains("bind") && in_help.contains("stderr-tail"),
        "the help was not read: {in_help:?}"
    );

    let chapter = concat!(env!("CARGO_MANIFEST_DIR"), "/../book/src/master.md");
    let chapter = std::fs::read_to_string(chapter).expect("read book/src/master.md");
    let in_table = flags_in_table(&chapter);

    let missing: Vec<_> = in_help.difference(&in_table).collect();
    assert!(
        missing.is_empty(),
        "flags in --help without a row in book/src/master.md: {missing:?}"
    );
    let stale: Vec<_> = in_table.difference(&in_help).collect();
    assert!(
        stale.is_empty(),
        "rows in book/src/master.md for flags --help does not print: {stale:?}"
    );
}

#[test]
fn the_readers_find_flags_in_both_shapes() {
    let help = "Options:\n  -b, --bind <ADDR>\n          Bind\n      --raw\n  -h, --help\n";
    assert_eq!(
        flags_in_help(help),
        BTreeSet::from(["bind".to_owned(), "raw".to_owned()])
    );
    let chapter = "x\n## Flags\n\n| flag | what |\n| --- | --- |\n| `-b, --bind ADDR` | a --note |\n| `-q, --quiet`, `-v, --verbose` | less |\n\n## Next\n| `--other` | x |\n";
    assert_eq!(
        flags_in_table(chapter),
        BTreeSet::from(["bind".to_owned(), "quiet".to_owned(), "verbose".to_owned()])
    );
}
