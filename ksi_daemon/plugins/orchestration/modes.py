"""The orchestration modes: who takes part, as which built-in profile, told to do what.

A mode lists its roles in speaking order. The first `default_agents` roles make the default
cast; extra agents take the roles from `repeat_from` on, in turn (a debate of four has two
proponents and two opponents; a class of four has one teacher and three students).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    profile: str  # a built-in agent profile (agent:profiles)
    instruction: str  # what this role does with the topic; "{topic}" is filled in


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    description: str
    roles: tuple[Role, ...]
    default_agents: int
    default_rounds: int
    min_agents: int = 2
    max_agents: int = 8
    repeat_from: int = 0

    def cast(self, agents: int) -> list[Role]:
        """The role of each of `agents` participants, in speaking order."""
        repeating = self.roles[self.repeat_from:]
        return [self.roles[i] if i < len(self.roles)
                else repeating[(i - len(self.roles)) % len(repeating)]
                for i in range(agents)]

    def describe(self) -> dict:
        return {"mode": self.name, "description": self.description,
                "roles": [{"role": r.name, "profile": r.profile, "instruction": r.instruction}
                          for r in self.roles],
                "default_agents": self.default_agents, "default_rounds": self.default_rounds,
                "min_agents": self.min_agents, "max_agents": self.max_agents}


MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("debate", "Two sides argue a motion in turn, each answering the other's last point.",
         (Role("proponent", "debater", "Argue for the motion \"{topic}\"."),
          Role("opponent", "debater", "Argue against the motion \"{topic}\".")),
         default_agents=2, default_rounds=4),
    Mode("collaboration", "Agents build one answer together, each improving on the last "
                          "contribution.",
         (Role("proposer", "collaborator", "Propose a concrete approach to \"{topic}\"."),
          Role("builder", "collaborator", "Build on the last contribution to \"{topic}\": "
                                          "keep what works, improve what does not."),
          Role("reviewer", "critic", "Review the plan for \"{topic}\" so far: name its "
                                     "weakest point and how to fix it.")),
         default_agents=2, default_rounds=3),
    Mode("teaching", "A teacher explains, students ask about what is still unclear.",
         (Role("teacher", "teacher", "Teach \"{topic}\" step by step and answer the "
                                     "student's questions."),
          Role("student", "student", "Learn \"{topic}\": say what you understood and ask "
                                     "about what is still unclear.")),
         default_agents=2, default_rounds=3, repeat_from=1),
    Mode("brainstorm", "Ideas are thrown out, stretched, then sifted.",
         (Role("ideator", "creative", "Throw out bold ideas about \"{topic}\"."),
          Role("stretcher", "creative", "Take the last idea about \"{topic}\" somewhere "
                                        "unexpected."),
          Role("critic", "critic", "Pick the most promising idea about \"{topic}\" so far and "
                                   "say what would make it work.")),
         default_agents=3, default_rounds=2),
    Mode("analysis", "A question is taken apart, checked against evidence, and summed up.",
         (Role("analyst", "analyst", "Break \"{topic}\" into its parts and analyse each."),
          Role("researcher", "researcher", "Bring facts and evidence that bear on \"{topic}\" "
                                           "and on the last analysis."),
          Role("synthesizer", "assistant", "Sum up what has been established about \"{topic}\" "
                                           "and what is still open.")),
         default_agents=2, default_rounds=3),
)}


def instruction_for(role: Role, topic: str) -> str:
    return role.instruction.format(topic=topic)


def system_prompt_for(role: Role, topic: str, profile_prompt: str) -> str:
    """The role comes first: a model (and the offline one, which quotes the start of its
    instructions) should know its part before its general character."""
    own = f"You are the {role.name} in this conversation. {instruction_for(role, topic)}"
    return f"{own}\n\n{profile_prompt}".strip()


def opening_message(role: Role, topic: str) -> str:
    """What the first speaker is told; everyone after it hears the previous speaker's text."""
    return f"{topic}\n\n{instruction_for(role, topic)} You speak first."
