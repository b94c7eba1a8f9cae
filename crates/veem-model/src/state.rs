//! VEE states (Table 2.1 of the paper) and control actions (Section 2.5.4), with the one
//! function that decides what an action does in a state.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a VEE as the VMI shows it to an SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VmiState {
    /// Submitted, waiting for placement or being deployed.
    Initial,
    /// Known to the VEEM, holding no host resources (a TWOPHASE reservation aside).
    Defined,
    Active,
    Paused,
    /// Memory saved to disk, host resources freed.
    Suspended,
    /// Ended; disks kept until purge.
    Destroyed,
}

/// The VEEM's own, finer view of a VEE (the right column of Table 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VeemState {
    /// INITIAL: waiting for the placement engine to find a host.
    Pending,
    /// INITIAL: placed and being deployed; PAUSED: its CPUs are stopped.
    Hold,
    /// DEFINED.
    Stopped,
    Active,
    Suspended,
    /// DESTROYED by a DESTROY action.
    Done,
    /// DESTROYED because its deployment or its process failed.
    Failed,
}

impl VeemState {
    /// The VMI states this VEEM state may stand for (Table 2.1).
    pub fn vmi_states(self) -> &'static [VmiState] {
        match self {
            VeemState::Pending => &[VmiState::Initial],
            VeemState::Hold => &[VmiState::Initial, VmiState::Paused],
            VeemState::Stopped => &[VmiState::Defined],
            VeemState::Active => &[VmiState::Active],
            VeemState::Suspended => &[VmiState::Suspended],
            VeemState::Done | VeemState::Failed => &[VmiState::Destroyed],
        }
    }
}

impl VmiState {
    pub const ALL: [VmiState; 6] = [
        VmiState::Initial,
        VmiState::Defined,
        VmiState::Active,
        VmiState::Paused,
        VmiState::Suspended,
        VmiState::Destroyed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmiState::Initial => "INITIAL",
            VmiState::Defined => "DEFINED",
            VmiState::Active => "ACTIVE",
            VmiState::Paused => "PAUSED",
            VmiState::Suspended => "SUSPENDED",
            VmiState::Destroyed => "DESTROYED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for VmiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for VeemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            VeemState::Pending => "PENDING",
            VeemState::Hold => "HOLD",
            VeemState::Stopped => "STOPPED",
            VeemState::Active => "ACTIVE",
            VeemState::Suspended => "SUSPENDED",
            VeemState::Done => "DONE",
            VeemState::Failed => "FAILED",
        };
        f.write_str(text)
    }
}

/// The VEEControlAction enumeration of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ControlAction {
    Activate,
    Pause,
    Suspend,
    Shutdown,
    Destroy,
}

impl ControlAction {
    pub const ALL: [ControlAction; 5] = [
        ControlAction::Activate,
        ControlAction::Pause,
        ControlAction::Suspend,
        ControlAction::Shutdown,
        ControlAction::Destroy,
    ];

    /// The state the action puts a VEE into.
    pub fn target(self) -> VmiState {
        match self {
            ControlAction::Activate => VmiState::Active,
            ControlAction::Pause => VmiState::Paused,
            ControlAction::Suspend => VmiState::Suspended,
            ControlAction::Shutdown => VmiState::Defined,
            ControlAction::Destroy => VmiState::Destroyed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ControlAction::Activate => "ACTIVATE",
            ControlAction::Pause => "PAUSE",
            ControlAction::Suspend => "SUSPEND",
            ControlAction::Shutdown => "SHUTDOWN",
            ControlAction::Destroy => "DESTROY",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for ControlAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The initialization model of InitializeVEEs (Section 2.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitModel {
    /// Define now; place whenever capacity allows.
    Besteffort,
    /// Define only if all VEEs can be placed now, and reserve that placement.
    Twophase,
}

/// What the VEEM must do to carry out a control action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The VEE is already in the action's target state: succeed, change nothing.
    Unchanged,
    /// DEFINED to ACTIVE: place, then deploy and boot.
    Deploy,
    /// INITIAL, ACTIVATE again: the VEE is already on its way to ACTIVE; wait with it.
    AwaitDeployment,
    /// PAUSED to ACTIVE.
    Resume,
    /// SUSPENDED to ACTIVE: place, then load the saved memory.
    Restore,
    /// ACTIVE to PAUSED.
    Pause,
    /// ACTIVE or PAUSED to SUSPENDED.
    Suspend,
    /// ACTIVE, PAUSED or SUSPENDED to DEFINED.
    Shutdown,
    /// Any state to DESTROYED.
    Destroy,
}

/// The outcome of a defined (state, action) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Step {
    pub transition: Transition,
    pub target: VmiState,
}

/// An undefined (state, action) pair: the contract's `wrong_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{action} is not defined in state {state}")]
pub struct WrongState {
    pub state: VmiState,
    pub action: ControlAction,
}

/// The transition function of the control interface: exhaustive, so that a new state or action
/// does not compile until every pair is decided.
///
/// ACTIVATE on INITIAL is accepted deliberately: the VEE is already heading to ACTIVE (an
/// ACTIVATE or SubmitVEEs that timed out as `pending`), and an SM must be able to retry it.
pub fn apply(state: VmiState, action: ControlAction) -> Result<Step, WrongState> {
    use ControlAction as A;
    use Transition as T;
    use VmiState as S;
    let transition = match (state, action) {
        (S::Defined, A::Activate) => T::Deploy,
        (S::Initial, A::Activate) => T::AwaitDeployment,
        (S::Active, A::Activate) => T::Unchanged,
        (S::Paused, A::Activate) => T::Resume,
        (S::Suspended, A::Activate) => T::Restore,
        (S::Destroyed, A::Activate) => return Err(WrongState { state, action }),

        (S::Active, A::Pause) => T::Pause,
        (S::Paused, A::Pause) => T::Unchanged,
        (S::Initial | S::Defined | S::Suspended | S::Destroyed, A::Pause) => {
            return Err(WrongState { state, action })
        }

        (S::Active | S::Paused, A::Suspend) => T::Suspend,
        (S::Suspended, A::Suspend) => T::Unchanged,
        (S::Initial | S::Defined | S::Destroyed, A::Suspend) => {
            return Err(WrongState { state, action })
        }

        (S::Active | S::Paused | S::Suspended, A::Shutdown) => T::Shutdown,
        (S::Defined, A::Shutdown) => T::Unchanged,
        (S::Initial | S::Destroyed, A::Shutdown) => return Err(WrongState { state, action }),

        (S::Initial | S::Defined | S::Active | S::Paused | S::Suspended, A::Destroy) => T::Destroy,
        (S::Destroyed, A::Destroy) => T::Unchanged,
    };
    Ok(Step {
        transition,
        target: action.target(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ControlAction as A;
    use Transition as T;
    use VmiState as S;

    /// Every (state, action) pair, written out: `None` is `wrong_state`.
    const TABLE: [(VmiState, ControlAction, Option<Transition>); 30] = [
        (S::Initial, A::Activate, Some(T::AwaitDeployment)),
        (S::Initial, A::Pause, None),
        (S::Initial, A::Suspend, None),
        (S::Initial, A::Shutdown, None),
        (S::Initial, A::Destroy, Some(T::Destroy)),
        (S::Defined, A::Activate, Some(T::Deploy)),
        (S::Defined, A::Pause, None),
        (S::Defined, A::Suspend, None),
        (S::Defined, A::Shutdown, Some(T::Unchanged)),
        (S::Defined, A::Destroy, Some(T::Destroy)),
        (S::Active, A::Activate, Some(T::Unchanged)),
        (S::Active, A::Pause, Some(T::Pause)),
        (S::Active, A::Suspend, Some(T::Suspend)),
        (S::Active, A::Shutdown, Some(T::Shutdown)),
        (S::Active, A::Destroy, Some(T::Destroy)),
        (S::Paused, A::Activate, Some(T::Resume)),
        (S::Paused, A::Pause, Some(T::Unchanged)),
        (S::Paused, A::Suspend, Some(T::Suspend)),
        (S::Paused, A::Shutdown, Some(T::Shutdown)),
        (S::Paused, A::Destroy, Some(T::Destroy)),
        (S::Suspended, A::Activate, Some(T::Restore)),
        (S::Suspended, A::Pause, None),
        (S::Suspended, A::Suspend, Some(T::Unchanged)),
        (S::Suspended, A::Shutdown, Some(T::Shutdown)),
        (S::Suspended, A::Destroy, Some(T::Destroy)),
        (S::Destroyed, A::Activate, None),
        (S::Destroyed, A::Pause, None),
        (S::Destroyed, A::Suspend, None),
        (S::Destroyed, A::Shutdown, None),
        (S::Destroyed, A::Destroy, Some(T::Unchanged)),
    ];

    #[test]
    fn every_state_action_pair_is_as_the_table_says() {
        for (state, action, expected) in TABLE {
            let got = apply(state, action);
            match expected {
                Some(transition) => assert_eq!(
                    got,
                    Ok(Step {
                        transition,
                        target: action.target()
                    }),
                    "{state} + {action}"
                ),
                None => assert_eq!(got, Err(WrongState { state, action }), "{state} + {action}"),
            }
        }
        // The table covers each pair exactly once.
        for state in S::ALL {
            for action in A::ALL {
                let n = TABLE
                    .iter()
                    .filter(|(s, a, _)| *s == state && *a == action)
                    .count();
                assert_eq!(n, 1, "{state} + {action} appears {n} times");
            }
        }
    }

    #[test]
    fn an_action_on_its_own_target_changes_nothing() {
        for action in A::ALL {
            let step = apply(action.target(), action).expect("a reached target is defined");
            assert_eq!(step.transition, T::Unchanged, "{action}");
        }
    }

    #[test]
    fn the_veem_states_map_to_table_2_1() {
        assert_eq!(VeemState::Pending.vmi_states(), &[S::Initial]);
        assert_eq!(VeemState::Hold.vmi_states(), &[S::Initial, S::Paused]);
        assert_eq!(VeemState::Stopped.vmi_states(), &[S::Defined]);
        assert_eq!(VeemState::Done.vmi_states(), &[S::Destroyed]);
        assert_eq!(VeemState::Failed.vmi_states(), &[S::Destroyed]);
    }

    #[test]
    fn names_round_trip() {
        for s in S::ALL {
            assert_eq!(S::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).expect("serializes"),
                format!("\"{s}\"")
            );
        }
        for a in A::ALL {
            assert_eq!(A::parse(&a.as_str().to_lowercase()), Some(a));
        }
    }
}
