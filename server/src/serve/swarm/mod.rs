//! BitTorrent: the image torrents, the server's tracker and its seed.

pub(crate) mod seeder;
pub(crate) mod torrent;
pub(crate) mod tracker;
