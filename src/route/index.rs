//! The index of one host group: finds the entries whose path rule can match a path without
//! looking at the others, so matching costs the same with 10 routes or 10,000.
//!
//! Exact rules sit in a hash map keyed by their path, prefix rules in a trie keyed by path
//! segments, templates in a trie whose edges are literal segments or a placeholder. A lookup
//! walks the request path's segments once; only regex rules are tried one by one (a regex can
//! match anywhere, so nothing narrows them down). The index only *selects* candidates: the
//! caller still checks each one with [`PathRule::matches`](super::path::PathRule) and the
//! route's conditions, in the group's priority order, so the index never decides a match.

use std::collections::HashMap;

use super::path::{PathRule, Segment};

/// Seeded: keys come from the config, lookups from clients.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Candidates for one host group. Positions are indexes into the group's ranked entry list.
#[derive(Debug, Default)]
pub(crate) struct GroupIndex {
    /// Exact rules by path; positions ascending.
    exact: Map<Box<str>, Vec<usize>>,
    templates: Trie<TemplateNode>,
    prefixes: Trie<PrefixNode>,
    /// Regex rules, ascending. They rank after every other kind.
    regex: Vec<usize>,
    /// Prefix rules that do not start with `/` (the validator refuses them): tried on every path.
    odd_prefixes: Vec<usize>,
}

/// Nodes in an arena; node 0 is the root.
#[derive(Debug)]
struct Trie<N> {
    nodes: Vec<N>,
}

impl<N: Default> Default for Trie<N> {
    fn default() -> Self {
        Trie {
            nodes: vec![N::default()],
        }
    }
}

#[derive(Debug, Default)]
struct PrefixNode {
    children: Map<Box<str>, usize>,
    /// Prefix rules whose segments end here.
    here: Vec<usize>,
}

#[derive(Debug, Default)]
struct TemplateNode {
    literal: Map<Box<str>, usize>,
    param: Option<usize>,
    /// Templates without a catch-all whose segments end here: they need the path to end too.
    end: Vec<usize>,
    /// Templates with a catch-all whose fixed segments end here: any rest of the path will do.
    catch_all: Vec<usize>,
}

impl GroupIndex {
    /// Indexes `rules`, given in the group's priority order.
    pub(crate) fn build<'a>(rules: impl IntoIterator<Item = &'a PathRule>) -> GroupIndex {
        let mut ix = GroupIndex::default();
        for (pos, rule) in rules.into_iter().enumerate() {
            match rule {
                PathRule::Exact(p) => ix.exact.entry(p.as_str().into()).or_default().push(pos),
                PathRule::Prefix(p) => match ix.prefixes.prefix_node(p) {
                    Some(node) => ix.prefixes.nodes[node].here.push(pos),
                    None => ix.odd_prefixes.push(pos),
                },
                PathRule::Template(t) => {
                    let node = ix.templates.template_node(t.segments());
                    let n = &mut ix.templates.nodes[node];
                    if t.catch_all() {
                        n.catch_all.push(pos);
                    } else {
                        n.end.push(pos);
                    }
                }
                PathRule::Regex(_) => ix.regex.push(pos),
            }
        }
        ix
    }

    /// Exact rules for `path`, in priority order.
    pub(crate) fn exact(&self, path: &str) -> &[usize] {
        self.exact.get(path).map_or(&[], Vec::as_slice)
    }

    /// Pushes the lists of template and prefix rules that may match `path`: every one that
    /// does match is in one of them. Each list is in priority order; [`Merged`] walks them.
    pub(crate) fn templates_and_prefixes<'s>(&'s self, path: &str, out: &mut Lists<'s>) {
        self.templates.templates_for(path, out);
        self.prefixes(path, out);
    }

    /// Pushes the lists of prefix rules that may match `path` (also for shadowing checks).
    pub(crate) fn prefixes<'s>(&'s self, path: &str, out: &mut Lists<'s>) {
        self.prefixes.prefixes_for(path, out);
        push(out, &self.odd_prefixes);
    }

    /// Pushes the lists of template rules that may match `path` (for shadowing checks).
    pub(crate) fn templates<'s>(&'s self, path: &str, out: &mut Lists<'s>) {
        self.templates.templates_for(path, out);
    }

    /// Regex rules, in priority order.
    pub(crate) fn regexes(&self) -> &[usize] {
        &self.regex
    }

    /// Pushes the prefix rules that may match every path (`/`), for shadowing checks of regexes.
    pub(crate) fn match_all_prefixes<'s>(&'s self, out: &mut Lists<'s>) {
        out.push(&self.prefixes.nodes[0].here);
        out.push(&self.odd_prefixes);
    }
}

impl Trie<PrefixNode> {
    /// The node of prefix `p`. A prefix is segment-aware and its trailing slashes do not count,
    /// so `/a/b/` is the node `a` → `b`, and `/` (or `//`) is the root, which every path reaches.
    /// `None` for a prefix that does not start with `/`, which the trie cannot place.
    fn prefix_node(&mut self, p: &str) -> Option<usize> {
        let p = p.trim_end_matches('/');
        let mut node = 0;
        let Some(rest) = p.strip_prefix('/') else {
            return p.is_empty().then_some(0);
        };
        for seg in rest.split('/') {
            node = match self.nodes[node].children.get(seg) {
                Some(&child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(PrefixNode::default());
                    self.nodes[node].children.insert(seg.into(), child);
                    child
                }
            };
        }
        Some(node)
    }

    /// `/a/b/c` reaches the root, `a`, `a/b` and `a/b/c`: the prefixes `prefix_match` accepts.
    fn prefixes_for<'s>(&'s self, path: &str, out: &mut Lists<'s>) {
        push(out, &self.nodes[0].here);
        let Some(rest) = path.strip_prefix('/') else {
            return;
        };
        let mut node = 0;
        if self.nodes[node].children.is_empty() {
            // Only `/` prefixes (or none): no segment to look at.
            return;
        }
        for seg in rest.split('/') {
            match self.nodes[node].children.get(seg) {
                Some(&child) => {
                    node = child;
                    push(out, &self.nodes[node].here);
                }
                None => return,
            }
        }
    }
}

impl Trie<TemplateNode> {
    /// The node reached by a template's fixed segments.
    fn template_node(&mut self, segments: &[Segment]) -> usize {
        let mut node = 0;
        for seg in segments {
            let next = match seg {
                Segment::Literal(l) => self.nodes[node].literal.get(l.as_str()).copied(),
                Segment::Param(_) => self.nodes[node].param,
            };
            node = match next {
                Some(child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(TemplateNode::default());
                    match seg {
                        Segment::Literal(l) => {
                            self.nodes[node].literal.insert(l.as_str().into(), child);
                        }
                        Segment::Param(_) => self.nodes[node].param = Some(child),
                    }
                    child
                }
            };
        }
        node
    }

    /// Templates that match `path`: one path segment per template segment, a placeholder taking
    /// any non-empty segment, and a catch-all whatever follows.
    fn templates_for<'s>(&'s self, path: &str, out: &mut Lists<'s>) {
        // A template matches only paths that start with `/` (as `Template::matches` requires).
        if let Some(rest) = path.strip_prefix('/') {
            self.visit(0, Some(rest), out);
        }
    }

    /// At `node`, with `rest` the path after the segments consumed so far (`None`: no segment
    /// left). Each node is visited at most once per path, so the cost is bounded by the path's
    /// segments times the branching the config itself wrote (a literal and a placeholder).
    fn visit<'s>(&'s self, node: usize, rest: Option<&str>, out: &mut Lists<'s>) {
        let n = &self.nodes[node];
        push(out, &n.catch_all);
        let Some(rest) = rest else {
            push(out, &n.end);
            return;
        };
        if n.literal.is_empty() && n.param.is_none() {
            // Nothing below (a table without templates has only this root): no segment to split.
            return;
        }
        let (head, tail) = match rest.split_once('/') {
            Some((head, tail)) => (head, Some(tail)),
            None => (rest, None),
        };
        if let Some(&child) = n.literal.get(head) {
            self.visit(child, tail, out);
        }
        if let Some(child) = n.param.filter(|_| !head.is_empty()) {
            self.visit(child, tail, out);
        }
    }
}

/// Adds a non-empty list.
fn push<'s>(out: &mut Lists<'s>, list: &'s [usize]) {
    if !list.is_empty() {
        out.push(list);
    }
}

/// Candidate lists of rule positions, one per path segment that has rules: a handful, kept on
/// the stack (a heap vector here was one allocation per routed request).
pub(crate) type Lists<'s> = smallvec::SmallVec<[&'s [usize]; 8]>;

/// The positions of several ascending lists, in ascending order, each once. Lazy: matching
/// usually stops at the first candidate, so the lists are merged only as far as needed, and a
/// thousand routes sharing one prefix cost nothing until they are reached.
pub(crate) struct Merged<'s> {
    lists: Lists<'s>,
    last: Option<usize>,
}

impl<'s> Merged<'s> {
    pub(crate) fn new(lists: Lists<'s>) -> Self {
        Merged { lists, last: None }
    }
}

impl Iterator for Merged<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            // Few lists (one per path segment that has rules, at most): a scan beats a heap.
            let (i, &pos) = self
                .lists
                .iter()
                .enumerate()
                .filter_map(|(i, l)| l.first().map(|p| (i, p)))
                .min_by_key(|&(_, p)| *p)?;
            self.lists[i] = &self.lists[i][1..];
            if self.last != Some(pos) {
                self.last = Some(pos);
                return Some(pos);
            }
        }
    }
}
