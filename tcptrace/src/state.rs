//! TCP states as Linux numbers them (`include/net/tcp_states.h`).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [Self; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    pub fn from_kernel(n: u8) -> Option<Self> {
        Self::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    pub fn number(self) -> u8 {
        self as u8
    }

    /// Upper-case name as in tcp-states docs and `ss`-style tools, e.g. `SYN_SENT`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TCP state `{0}` (expected one of: {list})", list = state_list())]
pub struct UnknownState(pub String);

fn state_list() -> String {
    TcpState::ALL
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for TcpState {
    type Err = UnknownState;

    /// Accepts the canonical names in any case, with `-` or `_`, and the common spellings
    /// `FIN_WAIT_1`, `SYN_RECEIVED`, `CLOSED`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let state = match norm.as_str() {
            "ESTABLISHED" | "ESTAB" => Self::Established,
            "SYNSENT" => Self::SynSent,
            "SYNRECV" | "SYNRECEIVED" => Self::SynRecv,
            "FINWAIT1" => Self::FinWait1,
            "FINWAIT2" => Self::FinWait2,
            "TIMEWAIT" => Self::TimeWait,
            "CLOSE" | "CLOSED" => Self::Close,
            "CLOSEWAIT" => Self::CloseWait,
            "LASTACK" => Self::LastAck,
            "LISTEN" => Self::Listen,
            "CLOSING" => Self::Closing,
            "NEWSYNRECV" => Self::NewSynRecv,
            _ => return Err(UnknownState(s.to_owned())),
        };
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_round_trip() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(state.number()), Some(state));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
        assert_eq!(TcpState::from_kernel(2), Some(TcpState::SynSent));
        assert_eq!(TcpState::from_kernel(7), Some(TcpState::Close));
    }

    #[test]
    fn names_parse_back_in_any_spelling() {
        for state in TcpState::ALL {
            assert_eq!(state.name().parse::<TcpState>(), Ok(state));
            assert_eq!(state.name().to_lowercase().parse::<TcpState>(), Ok(state));
        }
        assert_eq!("fin-wait-1".parse(), Ok(TcpState::FinWait1));
        assert_eq!("time_wait".parse(), Ok(TcpState::TimeWait));
        assert_eq!("closed".parse(), Ok(TcpState::Close));
        let err = "SYN".parse::<TcpState>().unwrap_err();
        assert!(err.to_string().contains("SYN_SENT"), "{err}");
    }

    #[test]
    fn display_pads_for_columns() {
        assert_eq!(format!("{:<12}|", TcpState::Listen), "LISTEN      |");
    }
}
