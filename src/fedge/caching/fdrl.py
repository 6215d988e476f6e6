"""FDRL: one DQN replacement agent per edge, the agents averaged with FedAvg.

Multi-agent MDP (after seed 001). Each edge is an agent; it decides at every miss of a full
cache (a decision epoch). State: for each of the C cached items and the newcomer, a feature
vector from the edge's own request history — long-run share of the edge's requests, share
of the last ``SHORT`` requests, recency (requests since its last request / (10·C), capped at
1), and a newcomer flag. Action: which of the C + 1 candidates to drop (dropping the
newcomer = not caching it). Reward: the edge's direct hits between this decision and the
next. The Q-network scores one candidate from its features (shared weights over
candidates), so Q(s, a) is the network's value of dropping candidate a; targets are
r + γ · max_a' Q_target(s', a') with a target network synced every ``target_every`` learning
steps, ε-greedy exploration and a replay buffer. Every ``fed_every`` episodes the agents'
networks are replaced by their (equal-weight) average (``weighted_mean``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from fedge.aggregation.mean import weighted_mean
from fedge.caching.settings import FdrlSettings

FEATURES = 4
SHORT = 100
LEARN_EVERY = 4


class QNet(torch.nn.Module):
    """Candidate features -> value of dropping that candidate."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x).squeeze(-1)
        return out


class Agent:
    """One edge's DQN: online and target networks, optimiser, replay buffer."""

    def __init__(self, cfg: FdrlSettings, seed: int) -> None:
        self.cfg = cfg
        with torch.random.fork_rng():  # seeded initialisation, global state untouched
            torch.manual_seed(seed)
            self.net = QNet(cfg.hidden)
        self.target = QNet(cfg.hidden)
        self.target.load_state_dict(self.net.state_dict())
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.buffer: deque[tuple[np.ndarray, int, float, np.ndarray]] = deque(maxlen=cfg.buffer)
        self.rng = np.random.default_rng(seed)
        self.decisions = 0
        self.learn_steps = 0

    def act(self, feats: np.ndarray, explore: bool) -> int:
        if explore and self.rng.random() < self.cfg.epsilon:
            return int(self.rng.integers(len(feats)))
        with torch.no_grad():
            return int(torch.argmax(self.net(torch.as_tensor(feats, dtype=torch.float32))))

    def remember(self, s: np.ndarray, a: int, r: float, s2: np.ndarray) -> None:
        self.buffer.append((s, a, r, s2))
        self.decisions += 1
        if self.decisions % LEARN_EVERY == 0 and len(self.buffer) >= self.cfg.batch:
            self.learn()

    def learn(self) -> None:
        pick = self.rng.integers(0, len(self.buffer), self.cfg.batch)
        batch = [self.buffer[i] for i in pick]
        s = torch.as_tensor(np.stack([b[0] for b in batch]), dtype=torch.float32)
        a = torch.as_tensor([b[1] for b in batch])
        r = torch.as_tensor([b[2] for b in batch], dtype=torch.float32)
        s2 = torch.as_tensor(np.stack([b[3] for b in batch]), dtype=torch.float32)
        q = self.net(s).gather(1, a[:, None]).squeeze(1)
        with torch.no_grad():
            target = r + self.cfg.gamma * self.target(s2).max(dim=1).values
        loss = torch.nn.functional.smooth_l1_loss(q, target)
        self.opt.zero_grad()
        torch.autograd.backward(loss)
        self.opt.step()
        self.learn_steps += 1
        if self.learn_steps % self.cfg.target_every == 0:
            self.target.load_state_dict(self.net.state_dict())


def federated_average(agents: Sequence[Agent]) -> None:
    """Replace every agent's online and target network by the agents' mean online network."""
    mean = weighted_mean([a.net.state_dict() for a in agents], [1.0] * len(agents))
    for a in agents:
        a.net.load_state_dict(mean)
        a.target.load_state_dict(mean)


class EdgeHistory:
    """An edge's request counts: all-time, over the last SHORT requests, and last positions."""

    def __init__(self, items: int) -> None:
        self.total = np.zeros(items)
        self.short = np.zeros(items)
        self.last = np.full(items, -(10**12), dtype=np.int64)
        self.window: deque[int] = deque()
        self.seen = 0

    def see(self, item: int) -> None:
        self.total[item] += 1
        self.short[item] += 1
        self.window.append(item)
        if len(self.window) > SHORT:
            self.short[self.window.popleft()] -= 1
        self.last[item] = self.seen
        self.seen += 1

    def features(self, candidates: list[int], capacity: int) -> np.ndarray:
        idx = np.array(candidates)
        out = np.empty((len(idx), FEATURES), dtype=np.float32)
        out[:, 0] = self.total[idx] / max(self.seen, 1) * capacity
        out[:, 1] = self.short[idx] / SHORT * capacity
        out[:, 2] = np.minimum((self.seen - self.last[idx]) / (10.0 * capacity), 1.0)
        out[:, 3] = 0.0
        out[-1, 3] = 1.0
        return out


class FdrlCache:
    """A cache whose replacements its edge's agent decides (learning when ``training``)."""

    def __init__(self, capacity: int, agent: Agent, items: int, training: bool) -> None:
        self.capacity = capacity
        self.agent = agent
        self.training = training
        self.history = EdgeHistory(items)
        self._slots: list[int] = []
        self._pos: dict[int, int] = {}
        self._pending: tuple[np.ndarray, int] | None = None
        self.reward = 0.0
        self.hits = 0
        self.requests = 0

    def lookup(self, item: int, k: int) -> bool:
        self.history.see(item)
        self.requests += 1
        if item in self._pos:
            self.reward += 1.0
            self.hits += 1
            return True
        return False

    def admit(self, item: int, k: int) -> None:
        if len(self._slots) < self.capacity:
            self._pos[item] = len(self._slots)
            self._slots.append(item)
            return
        feats = self.history.features([*self._slots, item], self.capacity)
        if self.training and self._pending is not None:
            self.agent.remember(self._pending[0], self._pending[1], self.reward, feats)
        action = self.agent.act(feats, explore=self.training)
        self._pending, self.reward = (feats, action), 0.0
        if action == self.capacity:
            return
        del self._pos[self._slots[action]]
        self._slots[action] = item
        self._pos[item] = action

    def __contains__(self, item: object) -> bool:
        return item in self._pos

    def __iter__(self) -> Iterator[int]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)


def fdrl_caches(
    agents: Sequence[Agent], capacity: int, items: int, training: bool
) -> list[FdrlCache]:
    """Fresh, empty caches, one per edge, driven by ``agents``."""
    return [FdrlCache(capacity, a, items, training) for a in agents]


def hit_ratio(caches: Sequence[FdrlCache]) -> float:
    req = sum(c.requests for c in caches)
    return sum(c.hits for c in caches) / req if req else 0.0
