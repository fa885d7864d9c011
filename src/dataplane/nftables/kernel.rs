//! The kernel seam of the nftables backend: commit a transaction, read the
//! ruleset generation, dump our table. [`super::netlink::Nft`] is the real
//! one; the strict fake ([`super::fake::FakeNft`], `testing` feature)
//! stands in for it in unit tests.

use super::NftError;
use super::model::{Family, Name, Table};
use super::netlink::Nft;
use super::tx::{Batch, Transaction};

/// nf_tables as the backend uses it.
pub trait NftKernel: Send {
    /// Apply `tx` atomically (all or nothing). `known` holds the definitions
    /// of the sets the table has before `tx` (for the types of sets `tx`
    /// uses but does not create). Returns the ruleset generation after the
    /// commit.
    fn commit(&mut self, tx: &Transaction, known: &Table) -> Result<u32, NftError>;

    /// The ruleset generation: it moves on every commit by anyone.
    fn generation(&mut self) -> Result<u32, NftError>;

    /// Our table as the kernel has it (`None`: it does not exist).
    fn dump(&mut self, family: Family, table: &Name) -> Result<Option<Table>, NftError>;

    /// Whether the table exists (cheaper than a dump).
    fn exists(&mut self, family: Family, table: &Name) -> Result<bool, NftError>;
}

impl NftKernel for Nft {
    fn commit(&mut self, tx: &Transaction, known: &Table) -> Result<u32, NftError> {
        let batch = Batch::build(tx, known)?;
        Ok(Nft::commit(self, &batch)?.generation)
    }

    fn generation(&mut self) -> Result<u32, NftError> {
        Nft::generation(self)
    }

    fn dump(&mut self, family: Family, table: &Name) -> Result<Option<Table>, NftError> {
        self.dump_table(family, table)
    }

    fn exists(&mut self, family: Family, table: &Name) -> Result<bool, NftError> {
        self.table_exists(family, table)
    }
}
