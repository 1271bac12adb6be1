//! Files of an image's merged tree, read on the host: [`ImageTree`] sees
//! the unpacked layers as overlayfs merges them (the topmost layer that has
//! a name wins, a whiteout hides the name in the layers below, an opaque
//! directory hides their content of it, a directory merges only with the
//! directories right below it) and resolves every symbolic link inside the
//! image, as `openat2(RESOLVE_IN_ROOT)` would in a single tree: an absolute
//! target starts again at the image's root and `..` stops there. So a layer
//! entry `etc -> /etc` reaches the image's own `/etc` (here: itself, a
//! loop), never the host's.
//!
//! Paths are walked one name at a time with `lstat`, below directories
//! already known to be real directories of their layer, and the file found
//! is opened from its layer's directory with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so even a mistake here
//! cannot make the kernel follow a link out of the layer.
//!
//! Limits: at most [`MAX_LINKS`] links per lookup (the kernel's 40); a file
//! larger than the caller's limit is an error, never read in part; names
//! that are not regular files (directories, devices) read as absent.
//! overlayfs's `redirect_dir` and `metacopy` are not modelled: wisp's
//! layers, unpacked from tars, have neither.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use super::sys;

/// Most symbolic links one lookup follows, as Linux's `MAXSYMLINKS`.
pub const MAX_LINKS: usize = 40;

/// Why a file of an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("{path} in the image: more than {MAX_LINKS} symbolic links (a loop?)")]
    TooManyLinks { path: String },
    #[error("{path} in the image is larger than the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("reading {path} in the image ({}): {source}", host.display())]
    Io {
        path: String,
        host: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An image's merged tree: its unpacked layers, bottom first (as
/// [`super::Image::layers`] lists them).
#[derive(Debug, Clone, Copy)]
pub struct ImageTree<'a> {
    layers: &'a [PathBuf],
}

/// A directory of the merged tree.
#[derive(Debug, Clone)]
struct Dir {
    /// Its path relative to every layer's root.
    rel: PathBuf,
    /// The layers it is a directory of, top first, down to its first opaque
    /// one or the first layer holding something else under its name.
    layers: Vec<usize>,
}

/// What a name in a directory of the merged tree is.
enum Entry {
    Missing,
    Dir(Vec<usize>),
    Link(PathBuf),
    /// A regular file of this layer.
    File(usize),
    /// A device, FIFO or socket.
    Other,
}

/// One step of a walk.
enum Step {
    Up,
    Name(OsString),
}

impl<'a> ImageTree<'a> {
    pub fn new(layers: &'a [PathBuf]) -> Self {
        ImageTree { layers }
    }

    /// The content of the regular file at `path` (absolute, in the image),
    /// links followed inside the image; `None` if there is no such file.
    /// A file larger than `limit` bytes is [`TreeError::TooLarge`].
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, TreeError> {
        let Some((layer, rel)) = self.resolve(path)? else {
            return Ok(None);
        };
        let root = &self.layers[layer];
        let io_error = |source| TreeError::Io {
            path: path.to_owned(),
            host: root.join(&rel),
            source,
        };
        let file = sys::open_beneath(root, &rel).map_err(io_error)?;
        if !file.metadata().map_err(io_error)?.is_file() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io_error)?;
        if bytes.len() as u64 > limit {
            return Err(TreeError::TooLarge {
                path: path.to_owned(),
                limit,
            });
        }
        Ok(Some(bytes))
    }

    /// The layer and layer-relative path of the regular file `path` names.
    fn resolve(&self, path: &str) -> Result<Option<(usize, PathBuf)>, TreeError> {
        let root = Dir {
            rel: PathBuf::new(),
            layers: (0..self.layers.len()).rev().collect(),
        };
        // The directories from the root to the current one.
        let mut dirs = vec![root];
        // What is left to walk, the next step last.
        let mut todo: Vec<Step> = Vec::new();
        push_steps(&mut todo, Path::new(path));
        let mut links = 0;
        while let Some(step) = todo.pop() {
            let name = match step {
                Step::Up => {
                    if dirs.len() > 1 {
                        dirs.pop();
                    }
                    continue;
                }
                Step::Name(name) => name,
            };
            let Some(dir) = dirs.last() else {
                return Ok(None);
            };
            let rel = dir.rel.join(&name);
            match self.lookup(path, dir, &rel)? {
                Entry::Missing | Entry::Other => return Ok(None),
                Entry::Dir(layers) => dirs.push(Dir { rel, layers }),
                Entry::File(layer) => {
                    return Ok(todo.is_empty().then_some((layer, rel)));
                }
                Entry::Link(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(TreeError::TooManyLinks {
                            path: path.to_owned(),
                        });
                    }
                    if target.is_absolute() {
                        dirs.truncate(1);
                    }
                    push_steps(&mut todo, &target);
                }
            }
        }
        // The path names a directory.
        Ok(None)
    }

    /// What `rel` (a name in `dir`) is in the merged tree.
    fn lookup(&self, path: &str, dir: &Dir, rel: &Path) -> Result<Entry, TreeError> {
        let mut dirs = Vec::new();
        for &layer in &dir.layers {
            let host = self.layers[layer].join(rel);
            let io_error = |source| TreeError::Io {
                path: path.to_owned(),
                host: host.clone(),
                source,
            };
            let meta = match fs::symlink_metadata(&host) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e)),
            };
            let kind = meta.file_type();
            if kind.is_dir() {
                dirs.push(layer);
                if sys::is_opaque(&host).map_err(io_error)? {
                    break;
                }
                continue;
            }
            if !dirs.is_empty() {
                // A directory hides whatever lies below it under its name
                // that is not a directory.
                break;
            }
            return Ok(if sys::is_whiteout(&meta) {
                Entry::Missing
            } else if kind.is_symlink() {
                Entry::Link(fs::read_link(&host).map_err(io_error)?)
            } else if kind.is_file() {
                Entry::File(layer)
            } else {
                Entry::Other
            });
        }
        Ok(if dirs.is_empty() {
            Entry::Missing
        } else {
            Entry::Dir(dirs)
        })
    }
}

/// Queues the steps of `path` so that its first one is walked next.
fn push_steps(todo: &mut Vec<Step>, path: &Path) {
    let steps = path.components().filter_map(|c| match c {
        Component::ParentDir => Some(Step::Up),
        Component::Normal(name) => Some(Step::Name(name.to_owned())),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    });
    let start = todo.len();
    todo.extend(steps);
    todo[start..].reverse();
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Empty layers under a temporary directory, bottom first.
    struct Layers {
        _dir: tempfile::TempDir,
        paths: Vec<PathBuf>,
    }

    impl Layers {
        fn new(count: usize) -> Layers {
            let dir = tempfile::tempdir().unwrap();
            let paths: Vec<PathBuf> = (0..count)
                .map(|i| dir.path().join(format!("layer{i}")))
                .collect();
            for path in &paths {
                fs::create_dir(path).unwrap();
            }
            Layers { _dir: dir, paths }
        }

        fn file(&self, layer: usize, path: &str, content: &str) {
            let path = self.paths[layer].join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }

        fn link(&self, layer: usize, path: &str, target: &str) {
            let path = self.paths[layer].join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            symlink(target, path).unwrap();
        }

        fn read(&self, path: &str) -> Option<String> {
            ImageTree::new(&self.paths)
                .read(path, 1024)
                .unwrap()
                .map(|b| String::from_utf8(b).unwrap())
        }
    }

    #[test]
    fn the_topmost_layer_wins() {
        let layers = Layers::new(3);
        layers.file(0, "etc/passwd", "bottom");
        layers.file(0, "etc/group", "bottom group");
        layers.file(1, "etc/passwd", "middle");
        layers.file(2, "etc/motd", "top");
        assert_eq!(layers.read("/etc/passwd").as_deref(), Some("middle"));
        assert_eq!(layers.read("/etc/group").as_deref(), Some("bottom group"));
        assert_eq!(layers.read("/etc/motd").as_deref(), Some("top"));
        assert_eq!(layers.read("etc/./motd").as_deref(), Some("top"));
        assert_eq!(layers.read("/etc/shadow"), None);
        assert_eq!(layers.read("/etc"), None, "a directory is no file");
        assert_eq!(layers.read("/etc/passwd/x"), None);
    }

    /// Issue 11, finding 6: `etc -> /etc` in a layer made wisp read the
    /// host's `/etc/passwd`.
    #[test]
    fn absolute_links_resolve_from_the_images_root() {
        let layers = Layers::new(2);
        layers.file(0, "srv/etc/passwd", "the image's");
        layers.link(1, "etc", "/srv/etc");
        assert_eq!(layers.read("/etc/passwd").as_deref(), Some("the image's"));
        // `..` stops at the image's root.
        layers.link(1, "up", "../../../../../../../../srv/etc/passwd");
        assert_eq!(layers.read("/up").as_deref(), Some("the image's"));
        // A link to the host's /etc is a loop inside the image.
        let looping = Layers::new(1);
        looping.link(0, "etc", "/etc");
        let err = ImageTree::new(&looping.paths)
            .read("/etc/passwd", 1024)
            .unwrap_err();
        assert!(matches!(err, TreeError::TooManyLinks { .. }), "{err}");
        // Climbing out with `..` reaches the image's root, not the host's.
        let climbing = Layers::new(1);
        climbing.link(0, "etc", "../../../../../../../../../../usr/etc");
        assert_eq!(climbing.read("/etc/passwd"), None);
        climbing.file(0, "usr/etc/passwd", "inside");
        assert_eq!(climbing.read("/etc/passwd").as_deref(), Some("inside"));
    }

    #[test]
    fn links_resolve_across_layers_and_relative_to_their_directory() {
        let layers = Layers::new(3);
        layers.file(0, "usr/share/base/passwd", "shared");
        layers.link(1, "etc/passwd", "../usr/share/base/passwd");
        layers.link(2, "usr/share/base/group", "passwd");
        assert_eq!(layers.read("/etc/passwd").as_deref(), Some("shared"));
        assert_eq!(
            layers.read("/usr/share/base/group").as_deref(),
            Some("shared")
        );
        layers.link(2, "a", "b");
        layers.link(2, "b", "a");
        assert!(ImageTree::new(&layers.paths).read("/a", 1024).is_err());
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let layers = Layers::new(3);
        layers.file(0, "etc/passwd", "deleted above");
        layers.file(0, "etc/group", "hidden by an opaque dir");
        layers.file(0, "var/file", "kept");
        fs::create_dir_all(layers.paths[1].join("etc")).unwrap();
        sys::make_whiteout(&layers.paths[1].join("etc/passwd")).unwrap();
        assert_eq!(layers.read("/etc/passwd"), None);
        assert_eq!(
            layers.read("/etc/group").as_deref(),
            Some("hidden by an opaque dir")
        );
        fs::create_dir_all(layers.paths[2].join("etc")).unwrap();
        sys::make_opaque(&layers.paths[2].join("etc")).unwrap();
        assert_eq!(layers.read("/etc/group"), None);
        // A file above a directory hides it, and a directory above a file
        // does not merge with it.
        layers.file(2, "var", "a file now");
        assert_eq!(layers.read("/var/file"), None);
        layers.file(1, "srv", "a file");
        layers.file(2, "srv/x", "in a directory");
        assert_eq!(layers.read("/srv/x").as_deref(), Some("in a directory"));
    }

    #[test]
    fn a_file_over_the_limit_is_an_error_not_a_prefix() {
        let layers = Layers::new(1);
        layers.file(0, "etc/passwd", &"x".repeat(2000));
        let err = ImageTree::new(&layers.paths)
            .read("/etc/passwd", 1024)
            .unwrap_err();
        assert!(
            matches!(err, TreeError::TooLarge { limit: 1024, .. }),
            "{err}"
        );
        let fits = ImageTree::new(&layers.paths).read("/etc/passwd", 2000);
        assert_eq!(fits.unwrap().map(|b| b.len()), Some(2000));
    }
}
