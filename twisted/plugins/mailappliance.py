"""twistd plugin: `twistd mailappliance` builds its services in appliance.tap."""
from twisted.application.service import ServiceMaker

mailappliance = ServiceMaker("mailappliance", "appliance.tap", "The mailappliance mail server.", "mailappliance")
