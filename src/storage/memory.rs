//! An in-memory backend for tests: the same contract as the others,
//! nothing durable. Clones share one map, so a test can keep a handle
//! while a wrapper ([`super::Faulty`], [`super::Retrying`]) owns another.

use super::{Error, Key, ObjectMeta, Op, Result, Storage, check_prefix, source_error};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct Memory {
    objects: Arc<Mutex<BTreeMap<Key, Arc<Vec<u8>>>>>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memory({} objects)", self.objects.lock().unwrap().len())
    }
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    fn get(&self, op: Op, key: &Key) -> Result<Arc<Vec<u8>>> {
        self.objects.lock().unwrap().get(key).cloned().ok_or_else(|| Error::NotFound { store: self.describe(), op, key: key.to_string() })
    }
}

impl Storage for Memory {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn put(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        self.objects.lock().unwrap().insert(key.clone(), Arc::new(bytes.to_vec()));
        Ok(())
    }

    fn put_file(&self, key: &Key, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| source_error(self, key, path, e))?;
        self.put(key, &bytes)
    }

    fn create(&self, key: &Key, bytes: &[u8]) -> Result<()> {
        let mut map = self.objects.lock().unwrap();
        if map.contains_key(key) {
            return Err(Error::AlreadyExists { store: self.describe(), key: key.to_string() });
        }
        map.insert(key.clone(), Arc::new(bytes.to_vec()));
        Ok(())
    }

    fn read(&self, key: &Key) -> Result<Vec<u8>> {
        Ok(self.get(Op::Read, key)?.to_vec())
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        let v = self.get(Op::Read, key)?;
        match offset.checked_add(len).filter(|&end| end <= v.len() as u64) {
            Some(end) => Ok(v[offset as usize..end as usize].to_vec()),
            None => Err(Error::Permanent {
                store: self.describe(),
                op: Op::Read,
                key: key.to_string(),
                detail: format!("range {offset}+{len} is past the end of the object"),
            }),
        }
    }

    fn head(&self, key: &Key) -> Result<ObjectMeta> {
        Ok(ObjectMeta { key: key.clone(), size: self.get(Op::Head, key)?.len() as u64 })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        check_prefix(prefix)?;
        let dir = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
        let map = self.objects.lock().unwrap();
        Ok(map
            .iter()
            .filter(|(k, _)| k.as_str().starts_with(&dir))
            .map(|(k, v)| ObjectMeta { key: k.clone(), size: v.len() as u64 })
            .collect())
    }

    fn delete(&self, key: &Key) -> Result<()> {
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
}
