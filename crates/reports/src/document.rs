//! A small document model that renders to both Markdown and self-contained XHTML, so that
//! `report.md` and `report.html` (and `compare.md`) say the same things.
//!
//! The HTML is well-formed XML (XHTML served as HTML): every element closed, every text and
//! attribute escaped, the SVG plots inlined, the CSS inline; no scripts, no external
//! references.

use std::fmt::Write as _;

/// A block of a document.
#[derive(Debug, Clone)]
pub(crate) enum Block {
    /// A heading (level 2 or 3; the title is level 1).
    Heading(u8, String),
    /// A paragraph of plain text; `code spans` in backticks render as code.
    Paragraph(String),
    /// A bulleted list of plain-text items.
    List(Vec<String>),
    /// A table: header cells, then rows of cells.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A plot: the file it is written to next to the Markdown (relative path), its SVG text
    /// and a caption.
    Plot {
        file: String,
        svg: String,
        caption: String,
    },
    /// Verbatim text (sample texts), shown as preformatted, wrapped lines.
    Verbatim(String),
    /// A Markdown document included as is in the Markdown and as preformatted text in HTML.
    Markdown(String),
}

/// A titled document.
#[derive(Debug, Clone)]
pub(crate) struct Document {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Document {
    pub fn new(title: impl Into<String>) -> Document {
        Document {
            title: title.into(),
            blocks: Vec::new(),
        }
    }

    pub fn push(&mut self, block: Block) {
        self.blocks.push(block);
    }

    /// The plots, in order, as (file, svg).
    pub fn plots(&self) -> impl Iterator<Item = (&str, &str)> {
        self.blocks.iter().filter_map(|block| match block {
            Block::Plot { file, svg, .. } => Some((file.as_str(), svg.as_str())),
            _ => None,
        })
    }

    /// Markdown; plots are image links to their files.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("# {}\n", markdown_inline(&self.title));
        for block in &self.blocks {
            out.push('\n');
            match block {
                Block::Heading(level, text) => {
                    let hashes = "#".repeat(usize::from(*level).clamp(2, 6));
                    let _ = writeln!(out, "{hashes} {}", markdown_inline(text));
                }
                Block::Paragraph(text) => {
                    let _ = writeln!(out, "{}", markdown_inline(text));
                }
                Block::List(items) => {
                    for item in items {
                        let _ = writeln!(out, "- {}", markdown_inline(item));
                    }
                }
                Block::Table(header, rows) => out.push_str(&markdown_table(header, rows)),
                Block::Plot { file, caption, .. } => {
                    let _ = writeln!(out, "![{}]({file})", markdown_cell(caption));
                }
                Block::Verbatim(text) => {
                    // A fence longer than any run of tildes in the text.
                    let longest = longest_run(text, '~');
                    let fence = "~".repeat(longest.max(3) + 1);
                    let _ = writeln!(out, "{fence}text\n{}\n{fence}", text.trim_end());
                }
                Block::Markdown(text) => {
                    let _ = writeln!(out, "{}", text.trim_end());
                }
            }
        }
        out
    }

    /// A complete, self-contained XHTML page.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n",
        );
        let _ = write!(
            out,
            "<head>\n<meta charset=\"utf-8\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n",
            escape(&self.title)
        );
        let _ = writeln!(out, "<body>\n<h1>{}</h1>", html_inline(&self.title));
        for block in &self.blocks {
            match block {
                Block::Heading(level, text) => {
                    let level = level.clamp(&2, &6);
                    let _ = writeln!(out, "<h{level}>{}</h{level}>", html_inline(text));
                }
                Block::Paragraph(text) => {
                    let _ = writeln!(out, "<p>{}</p>", html_inline(text));
                }
                Block::List(items) => {
                    out.push_str("<ul>\n");
                    for item in items {
                        let _ = writeln!(out, "<li>{}</li>", html_inline(item));
                    }
                    out.push_str("</ul>\n");
                }
                Block::Table(header, rows) => out.push_str(&html_table(header, rows)),
                Block::Plot { svg, caption, .. } => {
                    let _ = writeln!(
                        out,
                        "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>",
                        svg.trim(),
                        html_inline(caption)
                    );
                }
                Block::Verbatim(text) => {
                    let _ = writeln!(
                        out,
                        "<pre class=\"sample\">{}</pre>",
                        escape(text.trim_end())
                    );
                }
                Block::Markdown(text) => {
                    let _ = writeln!(
                        out,
                        "<pre class=\"statement\">{}</pre>",
                        escape(text.trim_end())
                    );
                }
            }
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

const STYLE: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;padding:0 1em;\
color:#222;line-height:1.45}table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid \
#bbb;padding:0.25em 0.6em;text-align:right}th{background:#eee}td:first-child,th:first-child{\
text-align:left}figure{margin:1em 0}figure svg{max-width:100%;height:auto}figcaption{font-size:\
0.9em;color:#555}pre{white-space:pre-wrap;background:#f6f6f6;padding:0.6em;border-left:3px \
solid #ccc}code{background:#f0f0f0;padding:0 0.2em}";

/// Escapes text for XML content and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Plain text with `code spans` as HTML.
fn html_inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", escape(part));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

/// Plain text for Markdown: characters that would start markup are escaped, `code spans`
/// kept.
fn markdown_inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "`{part}`");
        } else {
            for c in part.chars() {
                if matches!(c, '\\' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|') {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
    out
}

/// A table cell: one line, pipes escaped.
fn markdown_cell(text: &str) -> String {
    markdown_inline(&text.replace(['\n', '\r'], " "))
}

fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| markdown_cell(c)).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { "---".into() } else { "---:".into() })
        .collect();
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

fn html_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    for cell in header {
        let _ = write!(out, "<th>{}</th>", html_inline(cell));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", html_inline(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

fn longest_run(text: &str, c: char) -> usize {
    let (mut longest, mut current) = (0, 0);
    for ch in text.chars() {
        current = if ch == c { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Document {
        let mut doc = Document::new("Run <a> & b");
        doc.push(Block::Heading(2, "Results".into()));
        doc.push(Block::Paragraph(
            "Run `fedsyn eval DIR` first <now>.".into(),
        ));
        doc.push(Block::Table(
            vec!["method".into(), "ε".into()],
            vec![vec!["po|pri".into(), "1".into()]],
        ));
        doc.push(Block::Verbatim(
            "<script>alert(1)</script>\n~~~ fence".into(),
        ));
        doc
    }

    #[test]
    fn html_escapes_every_text() {
        let html = sample().to_html();
        assert!(html.contains("<title>Run &lt;a&gt; &amp; b</title>"));
        assert!(html.contains("<code>fedsyn eval DIR</code> first &lt;now&gt;."));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn markdown_tables_escape_pipes_and_fences_outlast_the_text() {
        let md = sample().to_markdown();
        assert!(md.contains("| po\\|pri | 1 |"), "{md}");
        assert!(md.contains("~~~~text\n<script>"), "{md}");
        assert!(md.contains("`fedsyn eval DIR`"));
    }

    #[test]
    fn control_characters_become_replacement_characters() {
        assert_eq!(escape("a\u{1}b\n"), "a\u{FFFD}b\n");
    }
}
