//! "Did you mean …?" suggestions: the candidate nearest to a mistyped word by edit distance,
//! when it is near enough to be a plausible typo.

/// Edit distance between `a` and `b` in characters, counting an insertion, a deletion, a
/// substitution or a swap of two neighbours as one edit (optimal string alignment).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut table = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            table[i * width + j] = if i == 0 {
                j
            } else if j == 0 {
                i
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (table[(i - 1) * width + j] + 1)
                    .min(table[i * width + j - 1] + 1)
                    .min(table[(i - 1) * width + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(table[(i - 2) * width + j - 2] + 1);
                }
                best
            };
        }
    }
    table[a.len() * width + b.len()]
}

/// The candidate closest to `word` (compared case-insensitively), if its distance is at most a
/// third of the word's length (and at least 1 edit is allowed).
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_uppercase();
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|&candidate| (edit_distance(&word, &candidate.to_uppercase()), candidate))
        .filter(|&(distance, _)| distance > 0 && distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("RUNN", "RUN"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("form", "from"), 1);
    }

    #[test]
    fn suggestions() {
        let names = ["RUN", "COPY", "ENTRYPOINT", "FROM"];
        assert_eq!(suggest("runn", &names), Some("RUN"));
        assert_eq!(suggest("ENTRYPIONT", &names), Some("ENTRYPOINT"));
        assert_eq!(suggest("FOO", &names), None);
        assert_eq!(suggest("xyzzy", &names), None);
    }
}
