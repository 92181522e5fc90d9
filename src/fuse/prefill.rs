//! Readahead across the files of a guest directory.
//!
//! A `cp -r` (or `tar`, `rsync`) of a guest tree reads its small files one
//! after the other, and through FUSE each of them costs a READ round trip
//! that the reader waits for: the kernel's own readahead works within one
//! file, never across files. So when a reader goes through the small files
//! of one directory, a thread of this mount reads the files that follow
//! (in listing order, which is the order in which `cp` and `tar` take them)
//! and pushes their bytes into the kernel's page cache with
//! FUSE_NOTIFY_STORE; their reads are then answered by the kernel itself.
//!
//! Bounded so that it costs nothing when unused: it starts on the second
//! small file read from the start in a directory, stays at most
//! [`AHEAD_BYTES`] of page cache ahead of the reader, skips files larger
//! than one FUSE read (the kernel's readahead serves those), and remembers
//! few directories. What it pushes is read through the same handles as a
//! READ, so a damaged file is not pushed and its READ gives EIO as before. The
//! pages are the kernel's to evict: files open without OPEN keep their page
//! cache (FOPEN_KEEP_CACHE is the kernel's default then, and is what OPEN
//! answers otherwise), and a guest file's attributes never change.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, OnceLock};

use fuser::{INodeNo, Notifier};

use crate::browse::{Kind, Node, VaultTree};

/// How far the pushed files may run ahead of the reader.
const AHEAD_BYTES: u64 = 8 << 20;
/// Files up to this size are pushed: larger ones take several READs anyway
/// and the kernel's readahead pipelines those.
const SMALL_FILE: u64 = super::MAX_READ as u64;
/// Directories whose walk is followed at once (a `cp -r` keeps one per
/// level of the tree it is in).
const DIRS: usize = 8;
/// The kernel caches whole pages: a file takes at least one.
const PAGE: u64 = 4096;

/// A small guest file read from its start: its directory and itself.
struct Hint {
    dir: Node,
    file: u64,
}

/// The mount's side: tells the pushing thread what is read.
pub struct Prefill {
    hints: Sender<Hint>,
    notifier: Arc<OnceLock<Notifier>>,
}

impl Prefill {
    /// Starts the pushing thread; it ends when the mount drops this.
    pub fn start(tree: Arc<VaultTree>) -> Prefill {
        let (hints, rx) = channel();
        let notifier = Arc::new(OnceLock::new());
        let n = notifier.clone();
        std::thread::Builder::new()
            .name("kluis-prefill".into())
            .spawn(move || Pusher { tree, notifier: n, walks: HashMap::new(), order: VecDeque::new() }.run(rx))
            .expect("spawn the prefill thread");
        Prefill { hints, notifier }
    }

    /// Where pushes go, to be set once the session is mounted. Until then
    /// (and if never set) nothing is pushed.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Guest file `file` (`size` bytes) is being read from offset 0. Its
    /// node is looked up only for a small file, and only once mounted.
    pub fn read_from_start(&self, tree: &VaultTree, file: u64, size: u64) {
        if size > SMALL_FILE || self.notifier.get().is_none() {
            return;
        }
        if let Some(node @ Node::Guest(..)) = tree.node(file) {
            let _ = self.hints.send(Hint { dir: tree.parent(&node), file });
        }
    }
}

/// One directory being read through: its small files in listing order.
#[derive(Default)]
struct Walk {
    files: Vec<(u64, Node, u64)>,
    /// Index in `files` of each file's node id.
    index: HashMap<u64, usize>,
    /// Files pushed or read already.
    done: Vec<bool>,
    /// Files read from their start so far (a walk starts at the second).
    reads: u32,
    /// The reader's position: the file after the last one it read.
    at: usize,
}

struct Pusher {
    tree: Arc<VaultTree>,
    notifier: Arc<OnceLock<Notifier>>,
    walks: HashMap<u64, Walk>,
    /// Directories by last use, oldest first.
    order: VecDeque<u64>,
}

impl Pusher {
    fn run(mut self, rx: Receiver<Hint>) {
        while let Ok(h) = rx.recv() {
            let mut dir = self.note(h);
            // Push one file at a time, taking the reader's new hints in
            // between: a file it has read meanwhile is not pushed again.
            while let Some(d) = dir {
                let Some((id, node, size)) = self.next_push(d) else { break };
                self.push(id, &node, size);
                let mut latest = Some(d);
                while let Ok(h) = rx.try_recv() {
                    latest = self.note(h).or(latest);
                }
                dir = latest;
            }
        }
    }

    /// Takes a hint; the directory whose walk goes on, if any.
    fn note(&mut self, h: Hint) -> Option<u64> {
        let d = self.tree.ino(&h.dir);
        self.order.retain(|x| *x != d);
        self.order.push_back(d);
        if self.order.len() > DIRS
            && let Some(old) = self.order.pop_front()
        {
            self.walks.remove(&old);
        }
        let w = self.walks.entry(d).or_default();
        w.reads += 1;
        if w.reads == 2 {
            // A walk: list the directory's small files (the listing is
            // cached, the kernel has just had it).
            let Ok(entries) = self.tree.entries(&h.dir) else { return None };
            for (_, node, kind) in entries {
                let Some(a) = (kind == Kind::File).then(|| self.tree.cached_attr(&node)).flatten() else { continue };
                if a.size > 0 && a.size <= SMALL_FILE {
                    let id = self.tree.ino_of(&node, &a);
                    w.index.insert(id, w.files.len());
                    w.files.push((id, node, a.size));
                }
            }
            w.done = vec![false; w.files.len()];
        }
        if let Some(&i) = w.index.get(&h.file) {
            w.done[i] = true;
            w.at = i + 1;
        }
        (w.reads >= 2).then_some(d)
    }

    /// The next file of directory `d` to push, if within reach of the reader.
    fn next_push(&mut self, d: u64) -> Option<(u64, Node, u64)> {
        let w = self.walks.get_mut(&d)?;
        let mut ahead = 0;
        for i in w.at..w.files.len() {
            let (id, node, size) = &w.files[i];
            ahead += size.next_multiple_of(PAGE);
            if ahead > AHEAD_BYTES {
                return None;
            }
            if !w.done[i] {
                w.done[i] = true;
                return Some((*id, node.clone(), *size));
            }
        }
        None
    }

    fn push(&self, id: u64, node: &Node, size: u64) {
        let Some(notifier) = self.notifier.get() else { return };
        let data = match self.tree.open(node).and_then(|h| h.read(0, size as usize)) {
            Ok(d) if d.len() as u64 == size => d,
            // Left to the READ, which reports it.
            _ => return,
        };
        if let Err(e) = notifier.store(INodeNo(id), 0, &data) {
            // ENOENT: the kernel has dropped the inode meanwhile.
            log::debug!("prefill of node {id}: {e}");
        }
    }
}
