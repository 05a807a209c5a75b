//! `--chmod` values: octal (`0755`, `4755`) as in every Dockerfile version, and the symbolic form
//! (`u+x,go-w`, `a=rX`) that Dockerfile 1.14 added. An octal mode replaces the permission and
//! set-id/sticky bits of every copied file and directory; a symbolic mode edits each entry's own
//! bits, with `X` adding execute only to directories and to files already executable by someone.

use crate::error::{FileOpError, Result};

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// `--chmod=0755`: the new permission bits (including set-id and sticky bits).
    Octal(u32),
    /// `--chmod=u+x,g-w`: clauses applied in order.
    Symbolic(Vec<SymbolicClause>),
}

/// One `who op perms` clause of a symbolic mode, with the operations it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolicClause {
    /// Bit mask of the classes affected (`u` = 0o4700, `g` = 0o2070, `o` = 0o1007 incl. special bits).
    who: u32,
    actions: Vec<(char, Perms)>,
}

/// The right-hand side of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Perms {
    /// Letters from `rwxXst`.
    Letters(String),
    /// Copy another class's current bits (`g=u`).
    CopyFrom(char),
}

impl Chmod {
    /// Parses a `--chmod` value.
    ///
    /// # Errors
    /// [`FileOpError::InvalidChmod`] when it is neither octal (at most `07777`) nor symbolic.
    pub fn parse(spec: &str) -> Result<Chmod> {
        let invalid = |reason| FileOpError::InvalidChmod {
            spec: spec.to_string(),
            reason,
        };
        if spec.is_empty() {
            return Err(invalid("empty mode"));
        }
        if spec.bytes().all(|b| b.is_ascii_digit()) {
            let mode =
                u32::from_str_radix(spec, 8).map_err(|_| invalid("octal modes use digits 0-7"))?;
            if mode > 0o7777 {
                return Err(invalid("octal mode is larger than 07777"));
            }
            return Ok(Chmod::Octal(mode));
        }
        let mut clauses = Vec::new();
        for clause in spec.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                match c {
                    'u' => who |= 0o4700,
                    'g' => who |= 0o2070,
                    'o' => who |= 0o1007,
                    'a' => who |= 0o7777,
                    _ => break,
                }
                chars.next();
            }
            if who == 0 {
                // No class given: all of them (BuildKit applies no umask here).
                who = 0o7777;
            }
            let mut actions = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(invalid("expected one of + - = after u, g, o or a"));
                }
                let mut letters = String::new();
                let mut copy_from = None;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' | 'w' | 'x' | 'X' | 's' | 't' if copy_from.is_none() => letters.push(c),
                        'u' | 'g' | 'o' if letters.is_empty() && copy_from.is_none() => {
                            copy_from = Some(c)
                        }
                        '+' | '-' | '=' => break,
                        _ => {
                            return Err(invalid(
                                "permissions are made of r, w, x, X, s, t or one of u, g, o",
                            ));
                        }
                    }
                    chars.next();
                }
                actions.push((
                    op,
                    copy_from
                        .map(Perms::CopyFrom)
                        .unwrap_or(Perms::Letters(letters)),
                ));
            }
            if actions.is_empty() {
                return Err(invalid("a clause needs an operator (+, - or =)"));
            }
            clauses.push(SymbolicClause { who, actions });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode an entry with current `mode` bits gets (`is_dir` matters for `X`).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(bits) => *bits,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for clause in clauses {
                    for (op, perms) in &clause.actions {
                        let bits = match perms {
                            Perms::Letters(letters) => letter_bits(letters, mode, is_dir),
                            Perms::CopyFrom(class) => copy_class_bits(*class, mode),
                        } & clause.who;
                        mode = match op {
                            '+' => mode | bits,
                            '-' => mode & !bits,
                            // `=` clears the affected classes' rwx (and their special bits) first.
                            _ => (mode & !clause.who) | bits,
                        };
                    }
                }
                mode
            }
        }
    }
}

/// The bits `rwxXst` letters stand for, for all classes (masked by the clause's classes later).
fn letter_bits(letters: &str, mode: u32, is_dir: bool) -> u32 {
    let mut bits = 0;
    for letter in letters.chars() {
        bits |= match letter {
            'r' => 0o444,
            'w' => 0o222,
            'x' => 0o111,
            'X' if is_dir || mode & 0o111 != 0 => 0o111,
            's' => 0o6000,
            't' => 0o1000,
            _ => 0,
        };
    }
    bits
}

/// The rwx bits of one class, replicated to every class.
fn copy_class_bits(class: char, mode: u32) -> u32 {
    let rwx = match class {
        'u' => (mode >> 6) & 0o7,
        'g' => (mode >> 3) & 0o7,
        _ => mode & 0o7,
    };
    rwx * 0o111
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_replaces_bits() {
        let chmod = Chmod::parse("0755").unwrap();
        assert_eq!(chmod.apply(0o600, false), 0o755);
        assert_eq!(Chmod::parse("4755").unwrap().apply(0o644, false), 0o4755);
        assert!(Chmod::parse("0888").is_err());
        assert!(Chmod::parse("17777").is_err());
    }

    #[test]
    fn symbolic_edits_bits() {
        assert_eq!(Chmod::parse("u+x").unwrap().apply(0o644, false), 0o744);
        assert_eq!(Chmod::parse("go-w").unwrap().apply(0o666, false), 0o644);
        assert_eq!(Chmod::parse("a=r").unwrap().apply(0o755, false), 0o444);
        assert_eq!(
            Chmod::parse("u=rwx,g=rx,o=").unwrap().apply(0o000, false),
            0o750
        );
        assert_eq!(Chmod::parse("g=u").unwrap().apply(0o640, false), 0o660);
        assert_eq!(Chmod::parse("+x").unwrap().apply(0o644, false), 0o755);
        assert_eq!(Chmod::parse("u+s").unwrap().apply(0o755, false), 0o4755);
    }

    #[test]
    fn symbolic_capital_x_only_for_dirs_and_executables() {
        let chmod = Chmod::parse("a+X").unwrap();
        assert_eq!(chmod.apply(0o644, false), 0o644);
        assert_eq!(chmod.apply(0o744, false), 0o755);
        assert_eq!(chmod.apply(0o644, true), 0o755);
    }

    #[test]
    fn symbolic_rejects_garbage() {
        assert!(Chmod::parse("u").is_err());
        assert!(Chmod::parse("u+q").is_err());
        assert!(Chmod::parse("").is_err());
    }
}
