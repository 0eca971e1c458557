//! Many short strings kept end to end in pages: the per-key bookkeeping of a large download.
//!
//! Owns: [`TextList`]. Pure. Does not own: what the strings are (download.rs, apply.rs).

/// Strings kept end to end in pages of [`PAGE`] bytes: per-key bookkeeping of a large download without a heap
/// allocation (and its overhead) per string, and without the copies and holes of one growing buffer.
#[derive(Clone, Debug, Default)]
pub(super) struct TextList {
    pages: Vec<String>,
    /// Per entry, where it ends in its page.
    ends: Vec<usize>,
    /// Per page, the index of its first entry.
    firsts: Vec<usize>,
}

/// Bytes per page of a [`TextList`] (a longer string gets a page of its own).
pub(super) const PAGE: usize = 64 * 1024;

impl TextList {
    /// Room for `entries` entries without reallocating the list of their ends.
    pub(super) fn with_capacity(entries: usize) -> TextList {
        TextList {
            ends: Vec::with_capacity(entries),
            ..TextList::default()
        }
    }
    pub(super) fn push(&mut self, s: &str) {
        let fits = self
            .pages
            .last()
            .is_some_and(|page| page.capacity() - page.len() >= s.len());
        if !fits {
            self.pages.push(String::with_capacity(PAGE.max(s.len())));
            self.firsts.push(self.ends.len());
        }
        if let Some(page) = self.pages.last_mut() {
            page.push_str(s);
            self.ends.push(page.len());
        }
    }
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }
    pub(super) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.pages.iter().enumerate().flat_map(move |(p, page)| {
            let first = self.firsts.get(p).copied().unwrap_or(0);
            let last = self.firsts.get(p + 1).copied().unwrap_or(self.ends.len());
            let ends = self.ends.get(first..last).unwrap_or(&[]);
            let starts = std::iter::once(0).chain(ends.iter().copied());
            starts
                .zip(ends.iter().copied())
                .map(move |(start, end)| page.get(start..end).unwrap_or(""))
        })
    }
    pub(super) fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_list_gives_back_what_was_pushed() {
        let long = "x".repeat(PAGE + 3);
        let mut want: Vec<String> = vec![String::new(), "a".into(), "ü-1".into(), long.clone(), String::new()];
        want.extend((0..30_000).map(|i| format!("meter-{i}")));
        want.push(long);
        want.push("end".into());
        let mut list = TextList::with_capacity(4);
        for s in &want {
            list.push(s);
        }
        assert_eq!(list.len(), want.len());
        assert!(list.to_vec() == want);
        assert!(list.pages.len() > 3 && list.pages.iter().all(|p| p.capacity() >= PAGE));
        assert_eq!(TextList::default().iter().count(), 0);
    }
}
