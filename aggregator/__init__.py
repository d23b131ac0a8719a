"""Aggregator: stores the window payloads of the edge agents and reports per lecture.

The server installs only the ``aggregator`` extra (paho-mqtt, SQLAlchemy, Alembic,
pydantic), so no module here may import the agent's camera or inference packages
(cv2, numpy, ai_edge_litert). ``edge_agent.payload`` is the one shared module.
"""

__version__ = "0.1.0"
