//! The plain-text tables the subcommands print (warm's summary, the status report): columns padded to
//! their widest cell, two spaces apart, trailing blanks trimmed, so they read well and `awk` splits them.

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Renders `header` and `rows` as lines; `suffixes[i]` (if any) is appended to row `i`'s line, outside
/// the columns (a note that would otherwise widen a column for every row).
pub fn render<const N: usize>(
    header: [&str; N],
    align: [Align; N],
    rows: &[[String; N]],
    suffixes: &[String],
) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    let mut out = String::new();
    for (n, row) in std::iter::once(&header).chain(rows.iter()).enumerate() {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            match align[i] {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        if let Some(suffix) = n.checked_sub(1).and_then(|i| suffixes.get(i)).filter(|s| !s.is_empty()) {
            line.push_str(suffix);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell() {
        let rows = [["alpine".to_owned(), "3".to_owned()], ["a".to_owned(), "12".to_owned()]];
        let text = render(["IMAGE", "N"], [Align::Left, Align::Right], &rows, &["".into(), "  (note)".into()]);
        assert_eq!(text, "IMAGE    N\nalpine   3\na       12  (note)\n");
    }
}
